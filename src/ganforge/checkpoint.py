"""The checkpoint and run-directory format: file names, keys, version, and what ``epoch`` means.

A training run directory holds::

    checkpoint.pt             the training state: every key of TRAINING_STATE_KEYS (+ epoch, train_seconds)
    config.json               the settled config (also inside every checkpoint, under "config")
    samples/epoch_NNN.png     the fixed-noise grid after each epoch
    snapshots/epoch_NNN.pt    the EMA generator alone after every snapshot_every-th epoch

``checkpoint.pt`` and the snapshots are ``torch.save`` zips whose zip comment records the sha256
of the zip (CHECKSUM_PREFIX + hex), read back with ``weights_only=True``; each carries
``format_version`` (FORMAT_VERSION) and the ganforge version that wrote it.

``epoch`` is the same number everywhere (checkpoint, snapshot, sample and snapshot file names,
``TrainResult.epoch``): ``epoch_number(step, steps_per_epoch)`` = ceil(step / steps_per_epoch),
the 1-based epoch the last step belongs to, which at an epoch's end is the count of completed
epochs. Format 1 (no ``format_version``) stored the 0-based index of that epoch in checkpoint.pt
(its snapshots already used the 1-based number); ``read_checkpoint`` converts it.

This module imports torch, the config and the models only: evaluation, generation and the
platform read checkpoints through it without importing the training loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from . import __version__
from .config import PipelineConfig
from .errors import GanforgeError
from .fileio import atomic_write_bytes
from .models import build_models

FORMAT_VERSION = 2
"""2: ``epoch`` is ``epoch_number`` in every file. 1 (no ``format_version`` key): checkpoint.pt's
``epoch`` was the 0-based epoch index."""
VERSION_KEY = "format_version"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
SAMPLES_DIR = "samples"
SNAPSHOT_DIR = "snapshots"
CHECKSUM_PREFIX = b"ganforge-sha256:"
"""checkpoint.pt and snapshots are torch.save's zip with this + the hex sha256 of the zip as the zip comment."""
TRAINING_STATE_KEYS = ("G", "G_ema", "D", "opt_G", "opt_D", "scaler_G", "scaler_D", "step", "rng", "config")
"""What ``--resume`` restores; a snapshot holds only G_ema, step, epoch and config."""
CYCLEGAN_STATE_KEYS = (
    "G_ab",
    "G_ba",
    "G_ab_ema",
    "G_ba_ema",
    "D_a",
    "D_b",
    "opt_G",
    "opt_D",
    "pool_a",
    "pool_b",
    "step",
    "rng",
    "config",
)
"""A ``cyclegan`` run's checkpoint.pt (``ganforge.cyclegan``): both generators, their EMA copies, both
discriminators, the joint optimisers and the image pools of past fakes (domain A's and B's)."""


class CheckpointError(GanforgeError, RuntimeError):
    """A checkpoint is missing, damaged, of another format or config; the message names the file and the fix."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint a path names: a run directory means its checkpoint.pt, anything else itself (a
    checkpoint or snapshot file, or a path that does not exist yet: the caller's error names it)."""
    path = Path(path).expanduser()
    return path / CHECKPOINT_NAME if path.is_dir() else path


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory: its config.json is a ganforge config (an object
    naming the preset and profile, with a ``train`` group). Training writes it before its first step."""
    config = Path(path) / CONFIG_NAME
    try:
        d = json.loads(config.read_text()) if config.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "name" in d and "profile" in d and isinstance(d.get("train"), dict)


def epoch_number(step: int, steps_per_epoch: int) -> int:
    """The epoch recorded with ``step``: ceil(step / steps_per_epoch) (see the module docstring)."""
    return math.ceil(step / steps_per_epoch)


def checkpoint_bytes(state: dict) -> bytes:
    """``torch.save(state)`` as bytes, with the sha256 of those bytes stored as the zip's comment.

    The result is still a plain zip that ``torch.load`` reads; :func:`read_checkpoint` recomputes
    the digest, so a byte changed on disk or in a copy is caught instead of resumed from.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    # The zip ends with its end-of-central-directory record: 22 bytes, the last two the comment length (0).
    if data[-22:-18] != b"PK\x05\x06" or data[-2:] != b"\0\0":
        raise RuntimeError(
            "torch.save wrote a zip without a bare end record; cannot add the checksum "
            f"(torch {torch.__version__}) — report this as a ganforge bug"
        )
    comment = CHECKSUM_PREFIX + hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + len(comment).to_bytes(2, "little") + comment


def verified_checkpoint_bytes(raw: bytes, path: Path) -> bytes:
    """``raw`` after checking the sha256 its zip comment records; CheckpointError when they differ.

    Files written before checkpoints carried a checksum (an empty zip comment) pass unchecked.
    """
    if raw[-22:-18] == b"PK\x05\x06" and raw[-2:] == b"\0\0":
        return raw  # written before checkpoints carried a checksum
    n = len(CHECKSUM_PREFIX) + 64
    end = len(raw) - 22 - n  # where the end record starts when the comment is our checksum
    fix = (
        "Fix: restore it from a copy (the run's s3:// prefix), or delete it and train again "
        "(or resume from an earlier copy)"
    )
    if (
        end < 0
        or raw[end : end + 4] != b"PK\x05\x06"
        or not raw[-n:].startswith(CHECKSUM_PREFIX)
        or int.from_bytes(raw[end + 20 : end + 22], "little") != n
    ):
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a ganforge checkpoint: its end has no valid "
            f"checksum record (a truncated file or a changed byte). {fix}"
        )
    recorded = raw[-64:].decode("ascii", errors="replace")
    actual = hashlib.sha256(raw[: end + 20] + b"\0\0").hexdigest()
    if actual != recorded:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents hash to sha256 {actual[:16]}… but it "
            f"records {recorded[:16]}… (bytes changed after it was written: disk, copy or "
            f"transfer error). {fix}"
        )
    return raw


def write_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (with the format and ganforge versions added) atomically, checksummed.

    Serialised in memory, then written with Python's own I/O: a full disk is an ENOSPC naming the
    file (StorageError) instead of torch's "unexpected pos", and the old checkpoint stays.
    """
    return atomic_write_bytes(
        path, checkpoint_bytes({**state, VERSION_KEY: FORMAT_VERSION, "ganforge_version": __version__})
    )


def snapshot_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / SNAPSHOT_DIR / f"epoch_{epoch:03d}.pt"


def write_snapshot(out_dir: str | os.PathLike, *, G_ema: nn.Module, step: int, epoch: int, cfg: PipelineConfig) -> Path:
    """The EMA generator alone at the end of an epoch (a few MB), readable by ``load_generator``."""
    return write_checkpoint(
        snapshot_path(out_dir, epoch),
        {"G_ema": G_ema.state_dict(), "step": step, "epoch": epoch, "config": cfg.to_dict()},
    )


def list_snapshots(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, path) of the run's snapshots, by epoch."""
    found = []
    for p in (Path(out_dir) / SNAPSHOT_DIR).glob("epoch_*.pt"):
        try:
            found.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    return sorted(found)


def upgrade(ckpt: dict, path: Path) -> dict:
    """``ckpt`` in the current format: format 1 gets its version and the 1-based checkpoint epoch."""
    version = ckpt.get(VERSION_KEY, 1)
    if version == FORMAT_VERSION:
        return ckpt
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, newer than this ganforge reads "
            f"({FORMAT_VERSION}); upgrade ganforge (it was written by ganforge "
            f"{ckpt.get('ganforge_version', '?')})"
        )
    ckpt = {**ckpt, VERSION_KEY: FORMAT_VERSION}
    if "opt_G" in ckpt and "epoch" in ckpt:  # a format-1 training checkpoint: 0-based epoch index
        ckpt["epoch"] = int(ckpt["epoch"]) + 1
    return ckpt


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint or snapshot in the current format, its sha256 checked first (CheckpointError
    naming the file when damaged); older formats are converted (``upgrade``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first (`ganforge train … --out {path.parent}`)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e}); check its permissions") from e
    raw = verified_checkpoint_bytes(raw, path)
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {reason}); "
            "it is not a ganforge checkpoint or is damaged — delete it and retrain"
        ) from e
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise CheckpointError(
            f"{path} is not a ganforge checkpoint (no config in it); pass a {CHECKPOINT_NAME} or "
            f"{SNAPSHOT_DIR}/epoch_NNN.pt written by `ganforge train`"
        )
    return upgrade(ckpt, path)


def require_training_state(ckpt: dict, path: Path) -> None:
    """CheckpointError unless ``ckpt`` holds everything ``--resume`` restores (a snapshot does not)."""
    missing = [k for k in TRAINING_STATE_KEYS if k not in ckpt]
    if not missing:
        return
    if "G_ema" in ckpt and "opt_G" not in ckpt:
        raise CheckpointError(
            f"{path} is a snapshot (the EMA generator of epoch {ckpt.get('epoch', '?')} only: no discriminator, "
            "optimisers or RNG state), so training cannot resume from it. Fix: resume from the checkpoint.pt "
            "that training wrote, or use the snapshot with `ganforge evaluate --checkpoint` / `ganforge generate`"
        )
    raise CheckpointError(
        f"{path} lacks {', '.join(missing)}, so training cannot resume from it; it is damaged or "
        "not a training checkpoint. Fix: delete it and train again, or resume from another copy"
    )


def load_state(module: nn.Module, state: dict, what: str, path: Path) -> None:
    """``module.load_state_dict(state)``, or a CheckpointError naming the shapes that do not fit."""
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and v.shape != own[k].shape
    ]
    missing = sorted(set(own) - set(state))
    if mismatched or missing:
        detail = "; ".join(mismatched[:3] + ([f"missing keys {missing[:3]}"] if missing else []))
        raise CheckpointError(
            f"checkpoint {path} does not fit this config ({what}: {detail}). It was written by a different "
            "config: resume with the config it was trained with, or train into a fresh --out directory"
        )
    module.load_state_dict(state)


def load_generator(path: str | os.PathLike, ema: bool = True, device: str = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """(generator in eval mode, its config) from a checkpoint; the EMA weights by default."""
    return generator_from_checkpoint(read_checkpoint(path), path, ema, device)


def generator_from_checkpoint(
    ckpt: dict, path: str | os.PathLike, ema: bool = True, device: str = "cpu"
) -> tuple[nn.Module, PipelineConfig]:
    """As ``load_generator``, from a checkpoint already read (``read_checkpoint(path)``)."""
    cfg = PipelineConfig.from_dict(ckpt["config"])
    G, _ = build_models(cfg.model, cfg.data)
    key = "G_ema" if ema else "G"
    if key not in ckpt:
        raise CheckpointError(
            f"{path} has no {key} (a snapshot holds only the EMA generator); "
            + (
                "drop --raw-generator, or pass the run's checkpoint.pt"
                if key == "G"
                else "pass a checkpoint.pt or snapshot written by `ganforge train`"
            )
        )
    load_state(G, ckpt[key], "generator", Path(path))
    return G.to(device).eval(), cfg
