"""The training loop: small steps (``d_step``, ``g_step``), checkpoints, and a short loop.

Determinism and resume: every source of randomness is a function of (seed, step), not of
history. Real batches come from a per-epoch permutation seeded by (seed, epoch); latent
noise for the *global* batch is drawn from a generator seeded by (seed, step, critic
iteration) and each rank takes its slice; the global torch RNG (gradient-penalty ε,
DiffAugment, phase shuffle) is reseeded per step and rank. So a run resumed from a
checkpoint at step s replays steps s+1… exactly as an uninterrupted run would, and a run
on N ranks sees the same global batches and noise as a single-rank run.

Distributed: ranks average gradients with ``torch.distributed.all_reduce`` after each
backward — the arithmetic DistributedDataParallel performs — without the DDP wrapper,
because the WGAN-GP penalty needs a double backward through D, which DDP's reducer does
not support, and D runs three times per step (real, fake, interpolates). BatchNorm
statistics stay per rank, as with DDP's default.

No MLflow or KFP here: metrics leave through the ``on_metrics`` callback (rank 0 only).
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .audio_io import spectrogram_grid_png, write_wavs
from .augment import diff_augment
from .checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    SAMPLES_DIR,
    CheckpointError,
    epoch_number,
    load_state,
    read_checkpoint,
    require_training_state,
    write_checkpoint,
    write_snapshot,
)
from .config import PipelineConfig
from .data import load_dataset
from .errors import GanforgeError
from .fileio import atomic_file, atomic_write_text
from .losses import d_loss, g_loss, gradient_penalty, r1_penalty
from .models import build_models
from .stop import StopFlag, Stopped

N_FIXED_SAMPLES = 64
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

MetricsFn = Callable[[int, dict], None]
SamplesFn = Callable[[int, Path], None]


class TrainingError(GanforgeError, RuntimeError):
    """Training cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    pass


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    step: int
    epoch: int
    seconds: float
    """Wall time of this call (since start or resume)."""
    img_per_s: float
    checkpoint: Path
    samples: list[Path]
    last_metrics: dict
    total_seconds: float = 0.0
    """Wall time of the whole run, summed over the calls that resumed it."""
    models: dict = field(default_factory=dict, repr=False)
    """The trained G, G_ema and D of this rank (for in-process callers and tests)."""


def init_distributed() -> DistInfo:
    """Join the process group torchrun (or the Training Operator) describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if world > 1 and not cuda:
        # Share the free cores between the ranks on this node instead of oversubscribing them (once per
        # process: a no-op when the CLI's entry point already decided; OMP_NUM_THREADS from the launcher wins).
        from . import threads

        threads.configure(processes=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from (seed, parts…); independent streams for each step/rank/iteration."""
    h = seed & 0xFFFFFFFF
    for p in parts:
        h = (h * 1_000_003 + p + 0x9E3779B9) % (2**63 - 1)
    return h


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_step_seed(seed, 1, epoch)))


def steps_per_epoch(n_examples: int, cfg: PipelineConfig) -> int:
    per_step = cfg.train.batch_size * cfg.train.n_critic
    steps = n_examples // per_step
    if steps == 0:
        raise TrainingError(
            f"the dataset has {n_examples} examples, fewer than one step needs "
            f"(batch_size {cfg.train.batch_size} × n_critic {cfg.train.n_critic}); "
            "lower train.batch_size or use more data (data.limit)"
        )
    return steps


def total_steps(n_examples: int, cfg: PipelineConfig) -> int:
    total = steps_per_epoch(n_examples, cfg) * cfg.train.epochs
    return min(total, cfg.train.max_steps) if cfg.train.max_steps else total


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images → [-1, 1]; int16 audio → [-1, 1). Converted per batch so data stays compact in memory."""
    if batch_u8.dtype == torch.uint8:
        return batch_u8.float().div_(127.5).sub_(1.0)
    if batch_u8.dtype == torch.int16:
        return batch_u8.float().div_(32768.0)
    raise TrainingError(f"unsupported data dtype {batch_u8.dtype}; expected uint8 images or int16 audio")


class _Batches:
    """Global batch b of epoch e = perm_e[b·B : (b+1)·B]; this rank takes its contiguous slice.

    ``labels`` (class-conditional runs): ``get_labels`` gives the labels of the same examples."""

    def __init__(
        self, data: torch.Tensor, cfg: PipelineConfig, dist_info: DistInfo, labels: torch.Tensor | None = None
    ):
        self.data, self.cfg, self.dist, self.labels = data, cfg, dist_info, labels
        self.local = cfg.train.batch_size // dist_info.world_size
        self._epoch, self._perm = -1, None

    def _indices(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(len(self.data), self.cfg.train.seed, epoch)
        start = index_in_epoch * self.cfg.train.batch_size + self.dist.rank * self.local
        return self._perm[start : start + self.local]

    def get(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        return self.data[self._indices(epoch, index_in_epoch)]

    def get_labels(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        return self.labels[self._indices(epoch, index_in_epoch)]


def global_noise(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo) -> torch.Tensor:
    """This rank's slice of the global batch's latent noise for (step, critic iteration k)."""
    g = torch.Generator().manual_seed(_step_seed(cfg.train.seed, 2, step, k))
    z = torch.randn(cfg.train.batch_size, cfg.model.nz, generator=g)
    local = cfg.train.batch_size // dist_info.world_size
    return z[dist_info.rank * local : (dist_info.rank + 1) * local]


def global_labels(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo) -> torch.Tensor:
    """Class-conditional runs: this rank's slice of the global batch's fake labels for (step, iteration k),
    uniform over the classes and, like the noise, a function of (seed, step, k) only."""
    g = torch.Generator().manual_seed(_step_seed(cfg.train.seed, 5, step, k))
    y = torch.randint(cfg.model.num_classes, (cfg.train.batch_size,), generator=g)
    local = cfg.train.batch_size // dist_info.world_size
    return y[dist_info.rank * local : (dist_info.rank + 1) * local]


def style_mixing(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo, num_ws: int) -> dict:
    """Style-mixing regularisation (StyleGAN): G's extra arguments for (step, iteration k) — with probability
    ``train.style_mixing`` a second latent (this rank's slice of a global batch) whose styles replace the first's
    from a crossover index drawn uniformly in [1, num_ws), one index for the whole batch as in stylegan2-ada;
    otherwise none. A function of (seed, step, k) only, like the noise, so a resumed run mixes the same way."""
    if not cfg.train.style_mixing:
        return {}
    g = torch.Generator().manual_seed(_step_seed(cfg.train.seed, 6, step, k))
    mix, cutoff = torch.rand((), generator=g).item(), int(torch.randint(1, num_ws, (), generator=g))
    z = torch.randn(cfg.train.batch_size, cfg.model.nz, generator=g)
    if mix >= cfg.train.style_mixing:
        return {}
    local = cfg.train.batch_size // dist_info.world_size
    return {"mix_z": z[dist_info.rank * local : (dist_info.rank + 1) * local], "mix_cutoff": cutoff}


def r1_due(cfg: PipelineConfig, step: int, k: int) -> bool:
    """Whether discriminator step (step, iteration k) carries the R1 penalty: every ``train.r1_interval``-th D
    step, counted from the first (lazy regularisation, StyleGAN2; interval 1 is every step)."""
    return cfg.train.r1_gamma > 0 and (step * cfg.train.n_critic + k) % cfg.train.r1_interval == 0


def fixed_labels(cfg: PipelineConfig, n: int = N_FIXED_SAMPLES) -> torch.Tensor | None:
    """Labels of the fixed sample grid: classes 0, 1, …, K-1 in turn; None for an unconditional run."""
    return torch.arange(n) % cfg.model.num_classes if cfg.model.num_classes else None


CLASSES_FILE = "classes.json"
"""Written beside checkpoint.pt by a class-conditional run: the training data's class names."""


def fixed_noise(cfg: PipelineConfig, n: int = N_FIXED_SAMPLES) -> torch.Tensor:
    return torch.randn(n, cfg.model.nz, generator=torch.Generator().manual_seed(_step_seed(cfg.train.seed, 3)))


def average_gradients(module: nn.Module, world_size: int) -> None:
    """All-reduce and average gradients in one flat buffer (one collective per step, like DDP's buckets)."""
    if world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(metrics: dict, world_size: int) -> dict:
    """Average scalar metrics over ranks (every rank must call it), so logged losses are global-batch means."""
    if world_size == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.stack([metrics[k].detach().float() for k in keys])  # on the device: NCCL needs CUDA tensors
    dist.all_reduce(values)
    return dict(zip(keys, values / world_size))


@torch.no_grad()
def update_ema(g_ema: nn.Module, g: nn.Module, decay: float, step: int) -> None:
    """EMA of G's weights with a warm-up (decay ramps from 0.1) so early samples are not stale; buffers copied."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(g_ema.parameters(), g.parameters()):
        pe.lerp_(p.detach(), 1 - d)
    for be, b in zip(g_ema.buffers(), g.buffers()):
        be.copy_(b)


def _on_device(kwargs: dict, ctx: _Context) -> dict:
    return {k: ctx.prepare(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


class _Context:
    """Per-run settings the steps need: autocast, memory format, grad scalers."""

    def __init__(self, cfg: PipelineConfig, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        dev = dist_info.device
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
        self.device_type = dev.type
        self.scaler_d = torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16")
        self.scaler_g = torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16")
        self.channels_last = cfg.train.channels_last and cfg.data.kind == "image"

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda" and x.device.type == "cpu":
            # from pageable memory a copy first waits for the device's queue; from pinned memory it is queued
            x = x.pin_memory()
        x = x.to(self.dist.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.train.diffaugment) if self.cfg.train.diffaugment else x


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    ctx: _Context,
    y_real: torch.Tensor | None = None,
    y_fake: torch.Tensor | None = None,
    apply_r1: bool = True,
    g_kwargs: dict | None = None,
) -> dict:
    """One discriminator/critic update on a real batch and G(z) (class-conditional: D(real, y_real) and
    D(G(z, y_fake), y_fake)). With ``train.r1_gamma`` the R1 penalty is added when ``apply_r1``, weighted
    γ/2 · ``train.r1_interval`` (lazy R1: the interval's steps' worth at once). ``g_kwargs`` go to G (the
    style-mixing arguments)."""
    tc = ctx.cfg.train
    real_c, fake_c = (() if y_real is None else (y_real,)), (() if y_fake is None else (y_fake,))
    apply_r1 = apply_r1 and tc.r1_gamma > 0
    opt_d.zero_grad(set_to_none=True)
    with torch.no_grad(), ctx.autocast():
        fake = G(z, *fake_c, **(g_kwargs or {}))
    if apply_r1:
        real = real.detach().requires_grad_(True)
    # torch.compile'd modules (train.compile) support no double backward, which the penalties need (R1 through
    # the real logits, WGAN-GP through its own pass): those passes run D's uncompiled module, the same weights.
    D_eager = getattr(D, "_orig_mod", D)
    with ctx.autocast():
        real_logits = (D_eager if apply_r1 else D)(ctx.augment(real), *real_c).float()
        fake_logits = D(ctx.augment(fake.float()), *fake_c).float()
        loss = d_loss(tc.loss, real_logits, fake_logits)
    out = {"loss_d": loss.detach()}
    if tc.loss == "wgan-gp":
        gp = gradient_penalty(D_eager, real, fake.float())
        loss = loss + tc.gp_weight * gp
        out["gp"] = gp.detach()
    if apply_r1:
        r1 = r1_penalty(real_logits, real)
        loss = loss + tc.r1_gamma / 2 * tc.r1_interval * r1
        out["r1"] = r1.detach()
    ctx.scaler_d.scale(loss).backward()
    average_gradients(D, ctx.dist.world_size)
    ctx.scaler_d.step(opt_d)
    ctx.scaler_d.update()
    out["d_real"] = real_logits.detach().mean()
    out["d_fake"] = fake_logits.detach().mean()
    return out


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    z: torch.Tensor,
    ctx: _Context,
    y: torch.Tensor | None = None,
    g_kwargs: dict | None = None,
) -> dict:
    """One generator update; D's gradients are computed but discarded (zeroed before its next step).
    ``g_kwargs`` go to G (the style-mixing arguments)."""
    c = () if y is None else (y,)
    opt_g.zero_grad(set_to_none=True)
    for p in D.parameters():
        p.requires_grad_(False)
    try:
        with ctx.autocast():
            loss = g_loss(ctx.cfg.train.loss, D(ctx.augment(G(z, *c, **(g_kwargs or {}))), *c).float())
        ctx.scaler_g.scale(loss).backward()
    finally:
        for p in D.parameters():
            p.requires_grad_(True)
    average_gradients(G, ctx.dist.world_size)
    ctx.scaler_g.step(opt_g)
    ctx.scaler_g.update()
    return {"loss_g": loss.detach()}


def build_training_state(cfg: PipelineConfig, device: torch.device):
    """Models, EMA copy and optimisers, identically initialised on every rank (seeded)."""
    torch.manual_seed(cfg.train.seed)
    G, D = build_models(cfg.model, cfg.data)
    G, D = G.to(device), D.to(device)
    if cfg.train.channels_last and cfg.data.kind == "image":
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    tc = cfg.train
    fused = {"fused": True} if device.type == "cuda" else {}  # one kernel for all parameters instead of a loop
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2), **fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2), **fused)
    return G, D, G_ema, opt_g, opt_d


def _rng_state() -> dict:
    """RNG states as tensors/lists only, so the checkpoint loads with ``weights_only=True``."""
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


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(
    path: Path,
    *,
    G,
    D,
    G_ema,
    opt_g,
    opt_d,
    ctx: _Context,
    step: int,
    epoch: int,
    cfg: PipelineConfig,
    train_seconds: float = 0.0,
    data_sha256: str | None = None,
) -> Path:
    """The training state at ``step`` (``epoch`` = ``epoch_number(step, …)``) into ``path``; ``data_sha256``:
    the training data's manifest sha256, which ``--resume`` compares (``check_resume_data``)."""
    return write_checkpoint(
        path,
        {
            **({"data_sha256": data_sha256} if data_sha256 else {}),
            "train_seconds": float(train_seconds),
            "threads": torch.get_num_threads(),  # bitwise resume needs the same count (_note_thread_change)
            "G": G.state_dict(),
            "G_ema": G_ema.state_dict(),
            "D": D.state_dict(),
            "opt_G": opt_g.state_dict(),
            "opt_D": opt_d.state_dict(),
            "scaler_G": ctx.scaler_g.state_dict(),
            "scaler_D": ctx.scaler_d.state_dict(),
            "step": step,
            "epoch": epoch,
            "rng": _rng_state(),
            "config": cfg.to_dict(),
        },
    )


def _note_thread_change(ckpt: dict, ckpt_path: Path) -> None:
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


def _restore(
    ckpt: dict,
    ckpt_path: Path,
    cfg: PipelineConfig,
    G,
    D,
    G_ema,
    opt_g,
    opt_d,
    ctx: _Context,
    allow_config_change: bool,
) -> None:
    """Load a training checkpoint into the freshly built state; the config decides the optimiser settings."""
    require_training_state(ckpt, ckpt_path)
    changes = resume_config_changes(ckpt["config"], cfg)
    if changes and not allow_config_change:
        listed = ", ".join(f"{k} {old!r} → {new!r}" for k, old, new in changes)
        raise CheckpointError(
            f"--resume from {ckpt_path} (step {ckpt['step']}) with a changed config: {listed}. The checkpoint's "
            "saved state (optimiser learning rates and betas, the run so far) was made with the old values. Fix: "
            "resume with the config it was trained with (as in its config.json), train into a new --out, or pass "
            "--allow-config-change to go on with the new values from this step"
        )
    for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema")):
        load_state(module, ckpt[key], key, ckpt_path)
    opt_g.load_state_dict(ckpt["opt_G"])
    opt_d.load_state_dict(ckpt["opt_D"])
    # Adam's state_dict carries lr and betas: the config, not the checkpoint, decides them (equal unless
    # --allow-config-change let them change).
    tc = cfg.train
    for opt, lr in ((opt_g, tc.lr_g), (opt_d, tc.lr_d)):
        for group in opt.param_groups:
            group["lr"], group["betas"] = lr, (tc.beta1, tc.beta2)
    for scaler, key in ((ctx.scaler_g, "scaler_G"), (ctx.scaler_d, "scaler_D")):
        if ckpt[key] or not scaler.is_enabled():  # an empty state comes from a disabled scaler (amp changed)
            scaler.load_state_dict(ckpt[key])
    _set_rng_state(ckpt["rng"])


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, batch_size: int = 256, labels: torch.Tensor | None = None) -> torch.Tensor:
    """G(z) (class-conditional: G(z, labels)) in batches, on CPU float, in eval mode."""
    G.eval()
    device = next(G.parameters()).device
    if labels is None:
        return torch.cat([G(z[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)])
    return torch.cat(
        [
            G(z[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(z), batch_size)
        ]
    )


def write_samples(G_ema: nn.Module, z: torch.Tensor, out_dir: Path, tag: str, cfg: PipelineConfig) -> Path:
    """Sample grid PNG for images; WAVs + spectrogram grid for audio. Returns the PNG path."""
    x = generate(G_ema, z, labels=fixed_labels(cfg, len(z)))
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{tag}.png"
    if cfg.data.kind == "audio":
        write_wavs(x[:8].numpy(), out_dir / tag, cfg.data.sample_rate)
        spectrogram_grid_png(x[:16].numpy(), png, nrow=4)
    else:
        from torchvision.utils import save_image

        with atomic_file(png) as tmp:
            save_image(x, tmp, format="png", nrow=int(math.sqrt(len(x))), normalize=True, value_range=(-1, 1))
    return png


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    from .progress import min_interval, progress_enabled

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not progress_enabled(),
        desc="train",
        mininterval=min_interval(),
    )


def conditional_labels(ds, cfg: PipelineConfig, data_dir) -> torch.Tensor:
    """The dataset's labels for a class-conditional run, checked against ``model.num_classes``."""
    if ds.labels is None:
        raise TrainingError(
            f"{cfg.name} is class-conditional (model.num_classes={cfg.model.num_classes}) but the "
            f"dataset {data_dir} has no labels.npy; prepare a labelled source (an IDX directory with "
            "its labels file, or an image folder with one subfolder per class)"
        )
    found = int(ds.manifest.get("num_classes") or (int(ds.labels.max()) + 1 if len(ds.labels) else 0))
    if found != cfg.model.num_classes:
        raise TrainingError(
            f"the dataset {data_dir} has {found} classes but model.num_classes="
            f"{cfg.model.num_classes}; set model.num_classes={found} (--set model.num_classes={found})"
        )
    return torch.from_numpy(np.array(ds.labels))


def classes_json(manifest: dict, cfg: PipelineConfig) -> str:
    """classes.json of a class-conditional run: its class names (ids as text when the data named none)."""
    import json

    from .labels import class_names_or_ids

    names = class_names_or_ids(manifest.get("class_names"), cfg.model.num_classes)
    return (
        json.dumps(
            {"num_classes": cfg.model.num_classes, "class_names": names, "class_counts": manifest.get("class_counts")},
            indent=2,
        )
        + "\n"
    )


def read_class_names(run_dir: str | os.PathLike, cfg: PipelineConfig) -> list[str]:
    """The class names a class-conditional run recorded (classes.json beside its checkpoint), else the ids."""
    import json

    from .labels import class_names_or_ids

    path = Path(run_dir) / CLASSES_FILE
    names = json.loads(path.read_text()).get("class_names") if path.is_file() else None
    return class_names_or_ids(names, cfg.model.num_classes)


def train(cfg: PipelineConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> TrainResult:
    """Train cfg's GAN on the prepared dataset at data_dir (``_train``'s arguments and contract).

    SIGTERM and SIGINT stop it gracefully (``ganforge.stop``): the ranks agree on a step, rank 0 writes
    the checkpoint at that step (and calls ``on_checkpoint``) and every rank raises ``stop.Stopped``."""
    with StopFlag() as flag:
        return _train(cfg, data_dir, out_dir, stop_flag=flag, **kwargs)


def _train(
    cfg: PipelineConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    on_metrics: MetricsFn | None = None,
    on_samples: SamplesFn | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    dist_info: DistInfo | None = None,
    allow_config_change: bool = False,
    allow_data_change: bool = False,
    stop_flag: StopFlag | None = None,
) -> TrainResult:
    """Train cfg's GAN on the prepared dataset at data_dir, writing checkpoint.pt and samples/ to out_dir.

    ``on_checkpoint(step, path)`` runs on rank 0 right after each checkpoint is written (e.g. to
    copy it to S3, so a replacement pod can resume from it).

    ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists. A config that differs from
    the checkpoint's in a field outside RESUME_SAFE_FIELDS is refused (CheckpointError naming the
    fields) unless ``allow_config_change``; then the new values apply from the resumed step,
    learning rates and betas included. A checkpoint trained on other data (its recorded dataset sha256
    differs from ``data_dir``'s) is refused likewise unless ``allow_data_change``.
    """
    dist_info = dist_info or init_distributed()
    tc = cfg.train
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif dist_info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME

    ds = load_dataset(data_dir)
    expected = (
        (cfg.data.channels, cfg.data.audio_length)
        if cfg.data.kind == "audio"
        else (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    )
    if tuple(ds.images.shape[1:]) != expected:
        raise TrainingError(
            f"dataset {data_dir} holds samples of shape {tuple(ds.images.shape[1:])}, but the config "
            f"expects {expected}; prepare the data with the same config (`ganforge prep`)"
        )
    data = torch.from_numpy(np.array(ds.images))  # uint8/int16 read into memory once; converted per batch
    labels = conditional_labels(ds, cfg, data_dir) if cfg.model.num_classes else None
    n_steps = total_steps(len(data), cfg)
    per_epoch = steps_per_epoch(len(data), cfg)

    G, D, G_ema, opt_g, opt_d = build_training_state(cfg, dist_info.device)
    ctx = _Context(cfg, dist_info)
    step, seconds_before = 0, 0.0
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_resume_data(ckpt, ckpt_path, ds.manifest, data_dir, allow_data_change)
        _restore(ckpt, ckpt_path, cfg, G, D, G_ema, opt_g, opt_d, ctx, allow_config_change)
        step = int(ckpt["step"])
        seconds_before = float(ckpt.get("train_seconds", 0.0))
        if dist_info.is_main:
            _note_thread_change(ckpt, ckpt_path)
    elif dist_info.is_main and ckpt_path.exists():
        print(
            f"note: {ckpt_path} exists and --resume was not given; training from scratch and overwriting it",
            file=sys.stderr,
        )

    num_ws = getattr(G, "num_ws", 0)  # style layers (stylegan), for style mixing
    G_train = torch.compile(G) if tc.compile else G
    D_train = torch.compile(D) if tc.compile else D
    batches = _Batches(data, cfg, dist_info, labels)
    z_fixed = fixed_noise(cfg)
    if dist_info.is_main:  # creates out_dir; an unwritable one is a StorageError naming it, before any step
        atomic_write_text(out_dir / CONFIG_NAME, cfg.to_json())
        if labels is not None:
            atomic_write_text(out_dir / CLASSES_FILE, classes_json(ds.manifest, cfg))
    samples: list[Path] = []
    bar = _progress(n_steps, step, dist_info.is_main)
    t0, start_step, last = time.perf_counter(), step, {}
    last_r1, stop_signal = None, 0
    first_bad = torch.zeros((), dtype=torch.long, device=dist_info.device)
    G.train(), D.train()
    while step < n_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        torch.manual_seed(_step_seed(tc.seed, 4, step, dist_info.rank))
        for k in range(tc.n_critic):
            real = ctx.prepare(to_float(batches.get(epoch, in_epoch * tc.n_critic + k)))
            cond = (
                {}
                if labels is None
                else {
                    "y_real": batches.get_labels(epoch, in_epoch * tc.n_critic + k).to(dist_info.device),
                    "y_fake": global_labels(cfg, step, k, dist_info).to(dist_info.device),
                }
            )
            z = ctx.prepare(global_noise(cfg, step, k, dist_info))
            mixing = _on_device(style_mixing(cfg, step, k, dist_info, num_ws), ctx)
            m = d_step(G_train, D_train, opt_d, real, z, ctx, **cond, apply_r1=r1_due(cfg, step, k), g_kwargs=mixing)
        if "r1" in m or last_r1 is not None:  # lazy R1: the latest value is logged until the next one
            m["r1"] = last_r1 = m.get("r1", last_r1)
        cond = {} if labels is None else {"y": global_labels(cfg, step, tc.n_critic, dist_info).to(dist_info.device)}
        z = ctx.prepare(global_noise(cfg, step, tc.n_critic, dist_info))
        mixing = _on_device(style_mixing(cfg, step, tc.n_critic, dist_info, num_ws), ctx)
        m.update(g_step(G_train, D_train, opt_g, z, ctx, **cond, g_kwargs=mixing))
        update_ema(G_ema, G, tc.ema_decay, step)
        step += 1
        # The first step with a non-finite loss, kept on the device: reading it is a host sync, done only before
        # anything is logged or written (on a GPU a sync per step stalls the queue of kernels).
        finite = torch.stack([torch.isfinite(v).all() for v in m.values()]).all()
        first_bad = torch.where(finite | (first_bad > 0), first_bad, step)
        epoch_done = step % per_epoch == 0 or step == n_steps
        log_now = step % tc.log_every == 0 or step == n_steps
        checkpoint_due = step % tc.checkpoint_every == 0 or step == n_steps
        stop_signal = stop_flag.agreed(dist_info.world_size, dist_info.device) if stop_flag else 0
        if (log_now or epoch_done or checkpoint_due or stop_signal) and int(first_bad):
            bad = ", ".join(k for k, v in m.items() if not torch.isfinite(v)) or "loss"
            raise NonFiniteLossError(
                f"non-finite {bad} at step {int(first_bad)}; training stopped. The last good checkpoint is kept at "
                f"{ckpt_path if ckpt_path.exists() else '(none yet)'}. Lower the learning rates, turn train.amp off, "
                "or use a more stable loss (wgan-gp)"
            )
        if log_now:
            m = mean_over_ranks(m, dist_info.world_size)
        if dist_info.is_main:
            if log_now:
                last = {k: float(v) for k, v in m.items()}
                last["img_per_s"] = (step - start_step) * tc.batch_size * tc.n_critic / (time.perf_counter() - t0)
                last["epoch"] = step / per_epoch
                if on_metrics:
                    on_metrics(step, last)
                if bar is not None:
                    bar.set_postfix(loss_d=f"{last['loss_d']:.3f}", loss_g=f"{last['loss_g']:.3f}")
                if bar is None or bar.disable:
                    print(
                        f"step {step}/{n_steps} epoch {last['epoch']:.2f} loss_d {last['loss_d']:.4f} "
                        f"loss_g {last['loss_g']:.4f} {last['img_per_s']:.1f} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
            if bar is not None:
                bar.update(1)
            if epoch_done:
                epoch_no = epoch_number(step, per_epoch)
                png = write_samples(G_ema, z_fixed, out_dir / SAMPLES_DIR, f"epoch_{epoch_no:03d}", cfg)
                samples.append(png)
                if on_samples:
                    on_samples(step, png)
                if tc.snapshot_every and (epoch_no % tc.snapshot_every == 0 or step == n_steps):
                    write_snapshot(out_dir, G_ema=G_ema, step=step, epoch=epoch_no, cfg=cfg)
        if dist_info.is_main and (checkpoint_due or stop_signal):  # a stop saves this step, as a periodic one
            save_checkpoint(
                ckpt_path,
                G=G,
                D=D,
                G_ema=G_ema,
                opt_g=opt_g,
                opt_d=opt_d,
                ctx=ctx,
                step=step,
                epoch=epoch_number(step, per_epoch),
                cfg=cfg,
                train_seconds=seconds_before + time.perf_counter() - t0,
                data_sha256=ds.manifest.get("sha256"),
            )
            if on_checkpoint:
                on_checkpoint(step, ckpt_path)
        if stop_signal:
            break
    if bar is not None:
        bar.close()
    if dist_info.world_size > 1:
        dist.barrier()
        # One line per rank (the step lines are rank 0's): a run can show that every rank trained. One write
        # of the whole line: print() writes text and newline apart, and the ranks share one stderr pipe, so
        # their lines interleaved ("rank 0 …1-8rank 1 …1-8", seen in a CI run).
        sys.stderr.write(f"rank {dist_info.rank} of {dist_info.world_size}: trained steps {start_step + 1}-{step}\n")
        sys.stderr.flush()
    if stop_signal and step < n_steps:  # after the barrier: rank 0's checkpoint is written when any rank leaves
        raise Stopped(stop_signal, step=step, checkpoint=ckpt_path)
    seconds = time.perf_counter() - t0
    done = step - start_step
    return TrainResult(
        step=step,
        epoch=epoch_number(step, per_epoch),
        seconds=seconds,
        img_per_s=done * tc.batch_size * tc.n_critic / seconds if seconds > 0 and done else 0.0,
        checkpoint=ckpt_path,
        samples=samples,
        last_metrics=last,
        total_seconds=seconds_before + seconds,
        models={"G": G, "G_ema": G_ema, "D": D},
    )
