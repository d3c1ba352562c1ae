"""Unpaired image-to-image translation (CycleGAN, Zhu et al. 2017): domain prep, training, resume.

Two domains A and B, each a prepared dataset directory (``prepare_domain``): by default two classes of
one labelled source (Fashion-MNIST sneaker 7 ↔ ankle boot 9, chosen by the IDX labels), or two image
folders (``data.source`` and ``data.source_b``). Training follows the paper's recipe: least-squares GAN
loss, cycle-consistency L1 with λ = ``train.cycle_weight``, identity L1 with ``identity_weight``·λ, a pool
of past fakes per discriminator, Adam; plus an EMA copy of both generators (used to translate and
evaluate).

Determinism: as in ``ganforge.train``, every random draw is a function of (seed, step): each domain's
batch order comes from a per-epoch permutation, the pool's choices from a generator seeded by (seed,
step, domain), and the pools themselves are saved in the checkpoint — so a resumed run equals an
uninterrupted one bit for bit (at equal thread counts).

No MLflow or KFP here: metrics leave through the ``on_metrics`` callback.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CYCLEGAN_STATE_KEYS,
    SAMPLES_DIR,
    CheckpointError,
    checkpoint_file,
    epoch_number,
    load_state,
    read_checkpoint,
    write_checkpoint,
)
from .config import DataConfig, PipelineConfig
from .data import (
    RawDataset,
    build_manifest,
    load_dataset,
    local_sources,
    prepared_files,
    read_source,
    write_dataset_files,
)
from .fileio import atomic_dir, atomic_write_bytes, atomic_write_text, check_output_dir
from .manifest import DataError
from .models import build_models
from .stop import StopFlag, Stopped
from .train import (
    TrainingError,
    TrainResult,
    _note_thread_change,
    _rng_state,
    _set_rng_state,
    _step_seed,
    epoch_permutation,
    resume_config_changes,
    to_float,
    update_ema,
)

DOMAINS = ("a", "b")
N_GRID = 8
"""Images per domain in the sample grids (input / translated / reconstructed rows)."""


def domain_data_config(data: DataConfig, domain: str) -> tuple[DataConfig, int]:
    """(the DataConfig that reads ``domain``'s source, the class id it keeps or -1)."""
    if domain == "a":
        return data, data.class_a
    source = data.source_b or data.source
    return replace(data, source=source), data.class_b


def prepare_domain(data: DataConfig, domain: str, out_dir: str | Path, split: str) -> dict:
    """Prepare domain ``domain`` ("a" or "b") of ``split`` into the dataset directory ``out_dir``.

    The class is chosen by the source's labels before ``data.limit`` applies, so ``limit`` keeps the
    first N images *of that class*. The manifest records the domain and class.
    """
    if domain not in DOMAINS:
        raise DataError(f"domain={domain!r} is not valid; choose 'a' or 'b'")
    cfg, class_id = domain_data_config(data, domain)
    check_output_dir(
        out_dir,
        command="ganforge prep",
        manifest="manifest.json",
        owned_files=prepared_files,
        protect=local_sources(cfg.source),
    )
    raw, recorded_split = read_source(replace(cfg, limit=None), split)
    images = raw.images
    if class_id >= 0:
        if raw.labels is None:
            raise DataError(
                f"data.class_{domain}={class_id} picks a class, but {cfg.source} has no labels; point "
                f"data.class_{domain} at -1 (the whole source) or use a labelled source (an IDX directory, or a "
                "folder with one subfolder per class)"
            )
        images = images[raw.labels == class_id]
        if not len(images):
            present = sorted(set(int(v) for v in np.unique(raw.labels)))
            raise DataError(
                f"{cfg.source} ({recorded_split}) has no images of class {class_id} (data.class_{domain}); "
                f"its classes are {present}"
            )
    images = np.ascontiguousarray(images[: cfg.limit])
    manifest = build_manifest(cfg.source, recorded_split, RawDataset(images, None, None))
    names = raw.class_names or []
    manifest.update(
        domain=domain,
        domain_class=class_id,
        domain_class_name=names[class_id] if 0 <= class_id < len(names) else None,
    )
    with atomic_dir(out_dir) as tmp:
        write_dataset_files(Path(tmp), RawDataset(images, None, None), manifest)
    return manifest


class ImagePool:
    """The last ``size`` fakes a discriminator saw (Shrivastava et al. 2017): once full, each new fake is
    returned as is or, with probability ½, swapped for a random stored one. Choices come from ``gen``."""

    def __init__(self, size: int, images: torch.Tensor | None = None):
        self.size = size
        self.images = [] if images is None else list(images.clone())

    def query(self, fakes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=gen) < 0.5:
                j = int(torch.randint(self.size, (), generator=gen))
                out.append(self.images[j])
                self.images[j] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self, shape: tuple) -> torch.Tensor:
        return torch.stack(self.images).cpu() if self.images else torch.zeros((0, *shape))


class CycleModels(nn.Module):
    """Both directions' generators (and EMA copies) and both domains' discriminators, one state."""

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.G_ab, self.D_b = build_models(cfg.model, cfg.data)  # A→B, judged by D_B
        self.G_ba, self.D_a = build_models(cfg.model, cfg.data)
        self.G_ab_ema = copy.deepcopy(self.G_ab).eval().requires_grad_(False)
        self.G_ba_ema = copy.deepcopy(self.G_ba).eval().requires_grad_(False)


def build_cycle_state(cfg: PipelineConfig, device: torch.device | str = "cpu"):
    """Models (seeded: identical on every call) on ``device`` and the two optimisers (both generators share
    one, as both discriminators do, as in the reference implementation)."""
    torch.manual_seed(cfg.train.seed)
    m = CycleModels(cfg).to(device)
    tc = cfg.train
    opt_g = torch.optim.Adam([*m.G_ab.parameters(), *m.G_ba.parameters()], lr=tc.lr_g, betas=(tc.beta1, tc.beta2))
    opt_d = torch.optim.Adam([*m.D_a.parameters(), *m.D_b.parameters()], lr=tc.lr_d, betas=(tc.beta1, tc.beta2))
    return m, opt_g, opt_d


def ls_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): mean (D(x) - target)² over every patch."""
    return F.mse_loss(scores, torch.full_like(scores, target))


def g_step(m: CycleModels, opt_g: torch.optim.Optimizer, a: torch.Tensor, b: torch.Tensor, cfg: PipelineConfig):
    """Update both generators; returns (losses, fake_a, fake_b) — the fakes go to the discriminators."""
    tc = cfg.train
    lam, lam_id = tc.cycle_weight, tc.identity_weight * tc.cycle_weight
    opt_g.zero_grad(set_to_none=True)
    for D in (m.D_a, m.D_b):
        D.requires_grad_(False)
    try:
        fake_b, fake_a = m.G_ab(a), m.G_ba(b)
        adv = ls_loss(m.D_b(fake_b), 1.0) + ls_loss(m.D_a(fake_a), 1.0)
        cycle = F.l1_loss(m.G_ba(fake_b), a) + F.l1_loss(m.G_ab(fake_a), b)
        identity = F.l1_loss(m.G_ab(b), b) + F.l1_loss(m.G_ba(a), a) if lam_id > 0 else a.new_zeros(())
        loss = adv + lam * cycle + lam_id * identity
        loss.backward()
    finally:
        for D in (m.D_a, m.D_b):
            D.requires_grad_(True)
    opt_g.step()
    losses = {
        "loss_g": loss.detach(),
        "loss_g_adv": adv.detach(),
        "cycle_l1": cycle.detach(),
        "idt_l1": identity.detach(),
    }
    return losses, fake_a.detach(), fake_b.detach()


def d_step(m: CycleModels, opt_d: torch.optim.Optimizer, real_a, real_b, fake_a, fake_b) -> dict:
    """Update both discriminators on real images and (pooled) fakes; each loss halved, as in the paper."""
    opt_d.zero_grad(set_to_none=True)
    loss_a = 0.5 * (ls_loss(m.D_a(real_a), 1.0) + ls_loss(m.D_a(fake_a), 0.0))
    loss_b = 0.5 * (ls_loss(m.D_b(real_b), 1.0) + ls_loss(m.D_b(fake_b), 0.0))
    (loss_a + loss_b).backward()
    opt_d.step()
    return {"loss_d_a": loss_a.detach(), "loss_d_b": loss_b.detach()}


def load_domain(path: str | Path, cfg: PipelineConfig, domain: str) -> torch.Tensor:
    ds = load_dataset(path)
    expected = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    if tuple(ds.images.shape[1:]) != expected:
        raise TrainingError(
            f"domain {domain.upper()} dataset {path} holds images of shape {tuple(ds.images.shape[1:])}, but the "
            f"config expects {expected}; prepare it with the same config"
        )
    return torch.from_numpy(np.array(ds.images))


def cycle_steps_per_epoch(n_a: int, n_b: int, cfg: PipelineConfig) -> int:
    """An epoch is one pass over the smaller domain (the larger one is sampled by its own permutation)."""
    steps = min(n_a, n_b) // cfg.train.batch_size
    if steps == 0:
        raise TrainingError(
            f"the domains hold {n_a} and {n_b} images, fewer than one batch ({cfg.train.batch_size}); lower "
            "train.batch_size or use more data (data.limit)"
        )
    return steps


def domain_batch(data: torch.Tensor, cfg: PipelineConfig, domain: int, epoch: int, index: int) -> torch.Tensor:
    perm = epoch_permutation(len(data), _step_seed(cfg.train.seed, 7, domain), epoch)
    bs = cfg.train.batch_size
    return to_float(data[perm[index * bs : (index + 1) * bs]])


@torch.no_grad()
def translation_rows(G_ab: nn.Module, G_ba: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows input A / A→B / A→B→A / input B / B→A / B→A→B, as one N×C×H×W batch in [-1, 1]."""
    fake_b, fake_a = G_ab(a), G_ba(b)
    return torch.cat([a, fake_b, G_ba(fake_b), b, fake_a, G_ab(fake_a)])


def grid_png(rows: torch.Tensor, ncol: int) -> bytes:
    from .generate import png_bytes, tile_grid, to_uint8_images

    return png_bytes(tile_grid(to_uint8_images(rows), ncol))


def save_cycle_checkpoint(path: Path, m: CycleModels, opt_g, opt_d, pools, step: int, epoch: int, cfg, seconds) -> Path:
    shape = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    return write_checkpoint(
        path,
        {
            "train_seconds": float(seconds),
            "threads": torch.get_num_threads(),
            **{k: getattr(m, k).state_dict() for k in ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b")},
            "opt_G": opt_g.state_dict(),
            "opt_D": opt_d.state_dict(),
            "pool_a": pools[0].state(shape),
            "pool_b": pools[1].state(shape),
            "step": step,
            "epoch": epoch,
            "rng": _rng_state(),
            "config": cfg.to_dict(),
        },
    )


def restore_cycle_checkpoint(
    ckpt: dict, path: Path, cfg: PipelineConfig, m: CycleModels, opt_g, opt_d, device: torch.device | str = "cpu"
) -> list:
    """Load a cyclegan checkpoint into a fresh state; returns the two image pools, on ``device``."""
    missing = [k for k in CYCLEGAN_STATE_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}, so a cyclegan run cannot resume from it (is it another preset's "
            "checkpoint?). Fix: train into a fresh --out directory"
        )
    changes = resume_config_changes(ckpt["config"], cfg)
    if changes:
        listed = ", ".join(f"{k} {old!r} → {new!r}" for k, old, new in changes)
        raise CheckpointError(
            f"resume from {path} (step {ckpt['step']}) with a changed config: {listed}. Fix: resume with the config "
            "it was trained with (its config.json), or train into a new --out"
        )
    for key in ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b"):
        load_state(getattr(m, key), ckpt[key], key, path)
    opt_g.load_state_dict(ckpt["opt_G"])
    opt_d.load_state_dict(ckpt["opt_D"])
    _set_rng_state(ckpt["rng"])
    pools = (ckpt["pool_a"].to(device), ckpt["pool_b"].to(device))
    return [ImagePool(cfg.train.pool_size, pools[0]), ImagePool(cfg.train.pool_size, pools[1])]


def train_cyclegan(
    cfg: PipelineConfig,
    data_a: str | Path,
    data_b: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_metrics: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train a cyclegan run on the prepared domains ``data_a`` and ``data_b``; writes checkpoint.pt,
    config.json and samples/epoch_NNN.png (input / translated / reconstructed rows) into ``out_dir``.
    ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists. SIGTERM and SIGINT stop it at
    a step boundary with a checkpoint at that step (``stop.Stopped`` raised), as ``train.train``."""
    with StopFlag() as flag:
        return _train_cyclegan(cfg, data_a, data_b, out_dir, resume, on_metrics, flag)


def _train_cyclegan(cfg, data_a, data_b, out_dir, resume, on_metrics, stop_flag: StopFlag) -> TrainResult:
    if cfg.model.arch != "cyclegan":
        raise TrainingError(f"train_cyclegan trains the cyclegan preset; {cfg.name} has model.arch={cfg.model.arch!r}")
    tc = cfg.train
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    real = [load_domain(data_a, cfg, "a"), load_domain(data_b, cfg, "b")]
    per_epoch = cycle_steps_per_epoch(len(real[0]), len(real[1]), cfg)
    n_steps = per_epoch * tc.epochs
    n_steps = min(n_steps, tc.max_steps) if tc.max_steps else n_steps
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m, opt_g, opt_d = build_cycle_state(cfg, device)
    pools = [ImagePool(tc.pool_size), ImagePool(tc.pool_size)]
    step, seconds_before = 0, 0.0
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        pools = restore_cycle_checkpoint(ckpt, ckpt_path, cfg, m, opt_g, opt_d, device)
        step, seconds_before = int(ckpt["step"]), float(ckpt.get("train_seconds", 0.0))
        _note_thread_change(ckpt, ckpt_path)
    atomic_write_text(out_dir / CONFIG_NAME, cfg.to_json())
    fixed = [to_float(r[:N_GRID]).to(device) for r in real]
    samples: list[Path] = []
    t0, start_step, last = time.perf_counter(), step, {}
    for module in (m.G_ab, m.G_ba, m.D_a, m.D_b):
        module.train()
    while step < n_steps:
        epoch, index = divmod(step, per_epoch)
        torch.manual_seed(_step_seed(tc.seed, 4, step, 0))
        a, b = (domain_batch(real[d], cfg, d, epoch, index).to(device) for d in (0, 1))
        losses, fake_a, fake_b = g_step(m, opt_g, a, b, cfg)
        pooled = [
            pools[d].query(f, torch.Generator().manual_seed(_step_seed(tc.seed, 6, step, d)))
            for d, f in ((0, fake_a), (1, fake_b))
        ]
        losses.update(d_step(m, opt_d, a, b, *pooled))
        update_ema(m.G_ab_ema, m.G_ab, tc.ema_decay, step)
        update_ema(m.G_ba_ema, m.G_ba, tc.ema_decay, step)
        step += 1
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        if bad:
            raise TrainingError(f"non-finite {', '.join(bad)} at step {step}; lower the learning rates")
        if step % tc.log_every == 0 or step == n_steps:
            last = {k: float(v) for k, v in losses.items()}
            last["img_per_s"] = (step - start_step) * tc.batch_size * 2 / (time.perf_counter() - t0)
            last["epoch"] = step / per_epoch
            if on_metrics:
                on_metrics(step, last)
            print(
                f"step {step}/{n_steps} epoch {last['epoch']:.2f} loss_g {last['loss_g']:.4f} cycle_l1 "
                f"{last['cycle_l1']:.4f} loss_d_a {last['loss_d_a']:.4f} loss_d_b {last['loss_d_b']:.4f}",
                file=sys.stderr,
                flush=True,
            )
        if step % per_epoch == 0 or step == n_steps:
            png = out_dir / SAMPLES_DIR / f"epoch_{epoch_number(step, per_epoch):03d}.png"
            atomic_write_bytes(png, grid_png(translation_rows(m.G_ab_ema, m.G_ba_ema, *fixed).cpu(), N_GRID))
            samples.append(png)
        stop_signal = stop_flag.agreed()
        if step % tc.checkpoint_every == 0 or step == n_steps or stop_signal:
            seconds = seconds_before + time.perf_counter() - t0
            save_cycle_checkpoint(ckpt_path, m, opt_g, opt_d, pools, step, epoch_number(step, per_epoch), cfg, seconds)
        if stop_signal and step < n_steps:
            raise Stopped(stop_signal, step=step, checkpoint=ckpt_path)
    seconds = time.perf_counter() - t0
    done = step - start_step
    return TrainResult(
        step=step,
        epoch=epoch_number(step, per_epoch),
        seconds=seconds,
        img_per_s=done * tc.batch_size * 2 / seconds if seconds > 0 and done else 0.0,
        checkpoint=ckpt_path,
        samples=samples,
        last_metrics=last,
        total_seconds=seconds_before + seconds,
        models={"G_ab_ema": m.G_ab_ema, "G_ba_ema": m.G_ba_ema},
    )


def load_translators(path: str | Path) -> tuple[nn.Module, nn.Module, PipelineConfig]:
    """(A→B, B→A EMA generators in eval mode, config) from a cyclegan checkpoint.pt or its run directory."""
    path = checkpoint_file(path)
    return translators_from(read_checkpoint(path), path)


def translators_from(ckpt: dict, path: str | Path) -> tuple[nn.Module, nn.Module, PipelineConfig]:
    """``load_translators`` of a checkpoint already read from ``path`` (named in the error)."""
    cfg = PipelineConfig.from_dict(ckpt["config"])
    if cfg.model.arch != "cyclegan" or "G_ab_ema" not in ckpt:
        raise CheckpointError(
            f"{path} is a {cfg.name} checkpoint, not a cyclegan one; translate with a run trained by the cyclegan "
            "pipeline"
        )
    gens = []
    for key in ("G_ab_ema", "G_ba_ema"):
        G, _ = build_models(cfg.model, cfg.data)
        load_state(G, ckpt[key], key, path)
        gens.append(G.eval().requires_grad_(False))
    return gens[0], gens[1], cfg


class CycleTranslator(nn.Module):
    """Both EMA generators as one program for the registry: images (B, C, H, W) in [-1, 1] →
    (B, 2, C, H, W), index 0 the A→B translation and 1 the B→A one (``DIRECTION_INDEX``)."""

    def __init__(self, G_ab: nn.Module, G_ba: nn.Module):
        super().__init__()
        self.G_ab, self.G_ba = G_ab, G_ba

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.G_ab(x), self.G_ba(x)], dim=1)


DIRECTION_INDEX = {"a2b": 0, "b2a": 1}


class OneDirection(nn.Module):
    """One direction of a registered ``CycleTranslator`` program, as a generator image → image."""

    def __init__(self, program: nn.Module, direction: str):
        super().__init__()
        self.program, self.index = program, DIRECTION_INDEX[direction]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)[:, self.index]
