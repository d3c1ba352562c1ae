"""Saving and restoring the training state, and what ``--resume`` checks first (config and data changes).

The file format (names, keys, version, checksum) is ``ganforge.checkpoint``'s; this module decides what a
training checkpoint holds: the state's networks and optimisers under their keys, the gradient scalers,
step, epoch, config, the RNG state, the training data's sha256, and what the recipe adds (image pools).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_state, write_checkpoint
from ..config import PipelineConfig
from .state import StepContext, TrainState

RESUME_SAFE_FIELDS = frozenset(
    {
        "profile",
        "train.epochs",
        "train.max_steps",
        "train.checkpoint_every",
        "train.log_every",
        "train.snapshot_every",
        "train.nproc",
        "train.nnodes",
        "train.launcher",
        "train.compile",
        "data.reference_split",
    }
)
"""Fields ``--resume`` may change without ``--allow-config-change`` (besides every ``eval.*`` and
``registry.*``): how long to train, how often to log and save, how many ranks and where — none
changes what one training step computes. Any other change is refused unless asked for."""

SCALER_KEYS = {"scaler_G": "scaler_g", "scaler_D": "scaler_d"}
"""Checkpoint key → StepContext attribute of each gradient scaler."""
OPTIMIZER_LR = {"opt_G": "lr_g", "opt_D": "lr_d"}
"""Checkpoint key → the train field that sets its learning rate."""


def rng_state() -> dict:
    """RNG states as tensors/lists only, so the checkpoint loads with ``weights_only=True``.

    Every step reseeds the global torch RNG from (seed, step, rank), so restoring this state changes no
    step; checkpoint.pt keeps it because its format lists it (TRAINING_STATE_KEYS, read by older versions)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_state(
    path: Path,
    state: TrainState,
    ctx: StepContext,
    *,
    step: int,
    epoch: int,
    cfg: PipelineConfig,
    train_seconds: float = 0.0,
    data_sha256: str | None = None,
    extra: dict | None = None,
) -> Path:
    """The training state at ``step`` (``epoch`` = ``epoch_number(step, …)``) into ``path``; ``data_sha256``:
    the training data's manifest sha256, which ``--resume`` compares (``check_resume_data``); ``extra``: the
    recipe's own entries."""
    return write_checkpoint(
        path,
        {
            **({"data_sha256": data_sha256} if data_sha256 else {}),
            "train_seconds": float(train_seconds),
            "threads": torch.get_num_threads(),  # bitwise resume needs the same count (note_thread_change)
            **{key: module.state_dict() for key, module in state.modules.items()},
            **{key: opt.state_dict() for key, opt in state.optimizers.items()},
            **{key: getattr(ctx, attr).state_dict() for key, attr in SCALER_KEYS.items()},
            **(extra or {}),
            "step": step,
            "epoch": epoch,
            "rng": rng_state(),
            "config": cfg.to_dict(),
        },
    )


def restore_state(
    ckpt: dict, path: Path, cfg: PipelineConfig, state: TrainState, ctx: StepContext, allow_config_change: bool
) -> None:
    """Load a training checkpoint into the freshly built state; the config decides the optimiser settings.
    A checkpoint without scaler states (written before the family had them) leaves the fresh scalers."""
    check_config_change(ckpt, path, cfg, allow_config_change)
    for key, module in state.modules.items():
        load_state(module, ckpt[key], key, path)
    tc = cfg.train
    for key, opt in state.optimizers.items():
        opt.load_state_dict(ckpt[key])
        # Adam's state_dict carries lr and betas: the config, not the checkpoint, decides them (equal unless
        # --allow-config-change let them change).
        for group in opt.param_groups:
            group["lr"], group["betas"] = getattr(tc, OPTIMIZER_LR[key]), (tc.beta1, tc.beta2)
    for key, attr in SCALER_KEYS.items():
        scaler = getattr(ctx, attr)
        # an empty state comes from a disabled scaler (amp changed)
        if key in ckpt and (ckpt[key] or not scaler.is_enabled()):
            scaler.load_state_dict(ckpt[key])
    set_rng_state(ckpt["rng"])
    state.step = int(ckpt["step"])


def note_thread_change(ckpt: dict, ckpt_path: Path) -> None:
    """Say so when a resume runs at another intra-op thread count than the checkpoint was written at.

    The thread policy (ganforge.threads) follows the machine's load, and a step's reductions are split
    by thread, so the resumed run differs from an uninterrupted one in the last float bits (~1e-6,
    measured) — statistically the same training, not the same bits. Pinning the count restores that."""
    saved, now = ckpt.get("threads"), torch.get_num_threads()
    if saved is not None and int(saved) != now:
        print(
            f"note: resuming {ckpt_path} at {now} thread(s); it was written at {saved}. Training continues, but "
            f"matches an uninterrupted run bit for bit only at equal threads: set GANFORGE_THREADS={saved} to pin it",
            file=sys.stderr,
        )


def _flat_config(d: dict) -> dict:
    flat = {k: d[k] for k in ("name", "profile") if k in d}
    for group, values in d.items():
        if isinstance(values, dict):
            flat.update({f"{group}.{k}": v for k, v in values.items()})
    return flat


def resume_config_changes(saved: dict, cfg: PipelineConfig) -> list[tuple[str, object, object]]:
    """(field, checkpoint's value, this run's value) for every field a resume may not change silently.

    Fields outside RESUME_SAFE_FIELDS, ``eval.*`` and ``registry.*`` count; fields the checkpoint
    predates (not in its config) do not.
    """
    old, new = _flat_config(saved), cfg.flat()
    return [
        (k, old[k], new[k])
        for k in sorted(new)
        if k in old and old[k] != new[k] and k not in RESUME_SAFE_FIELDS and not k.startswith(("eval.", "registry."))
    ]


def check_config_change(ckpt: dict, ckpt_path: Path, cfg: PipelineConfig, allow_config_change: bool) -> None:
    changes = resume_config_changes(ckpt["config"], cfg)
    if changes and not allow_config_change:
        listed = ", ".join(f"{k} {old!r} → {new!r}" for k, old, new in changes)
        raise CheckpointError(
            f"--resume from {ckpt_path} (step {ckpt['step']}) with a changed config: {listed}. The checkpoint's "
            "saved state (optimiser learning rates and betas, the run so far) was made with the old values. Fix: "
            "resume with the config it was trained with (as in its config.json), train into a new --out, or pass "
            "--allow-config-change to go on with the new values from this step"
        )


def check_resume_data(ckpt: dict, ckpt_path: Path, manifest: dict, data_dir, allow_data_change: bool) -> None:
    """CheckpointError when the checkpoint was trained on other data than ``data_dir`` holds (the manifest
    sha256s differ), unless ``allow_data_change``. A checkpoint that predates the record passes."""
    saved, now = ckpt.get("data_sha256"), manifest.get("sha256")
    if saved is None or saved == now or allow_data_change:
        return
    raise CheckpointError(
        f"--resume from {ckpt_path} (step {ckpt['step']}) on other data: it was trained on a dataset with sha256 "
        f"{saved}, but {data_dir} has sha256 {now}. Fix: resume with the --data it was trained on, train into a "
        "new --out, or pass --allow-data-change to go on with this data from this step"
    )
