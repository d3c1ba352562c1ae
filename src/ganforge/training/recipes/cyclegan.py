"""The CycleGAN recipe (Zhu et al. 2017): two domains, two generators and two PatchGAN discriminators; per
step one G update (least-squares adversarial loss both ways + λ·cycle L1 + λ·identity_weight·identity L1)
then one D update on real images and pooled fakes; EMA copies of both generators; sample grids of input /
translated / reconstructed rows.

Determinism: each domain's batch order comes from its own per-epoch permutation, the pools' choices from a
generator seeded by (seed, step, domain), and the pools are saved in the checkpoint — so a resumed run equals
an uninterrupted one bit for bit (at equal thread counts). On several ranks each rank keeps its own pools of
the fakes it made; the checkpoint keeps rank 0's, so a multi-rank resume is not bitwise.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checkpoint import CYCLEGAN_STATE_KEYS, SAMPLES_DIR, CheckpointError, snapshot_path, write_checkpoint
from ...config import ConfigError, PipelineConfig
from ...data import load_dataset
from ...fileio import atomic_write_bytes
from ...losses import d_loss, g_loss
from ...models.cyclegan import CycleModels, ImagePool
from ..batches import Batches, capped_steps, step_seed, to_float
from ..dist import DistInfo, average_gradients
from ..errors import TrainingError
from ..state import StepContext, TrainState
from . import Recipe, TrainData

N_GRID = 8
"""Images per domain in the sample grids (input / translated / reconstructed rows)."""
NETWORKS = ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b")


def build_cycle_state(cfg: PipelineConfig, device: torch.device | str = "cpu"):
    """Models (seeded: identical on every call) on ``device`` and the two optimisers (both generators share
    one, as both discriminators do, as in the reference implementation)."""
    torch.manual_seed(cfg.train.seed)
    m = CycleModels(cfg.model, cfg.data).to(device)
    tc = cfg.train
    opt_g = torch.optim.Adam([*m.G_ab.parameters(), *m.G_ba.parameters()], lr=tc.lr_g, betas=(tc.beta1, tc.beta2))
    opt_d = torch.optim.Adam([*m.D_a.parameters(), *m.D_b.parameters()], lr=tc.lr_d, betas=(tc.beta1, tc.beta2))
    return m, opt_g, opt_d


class _Plain:
    """The step context of a direct call without one: fp32, no DiffAugment, one rank."""

    dist = DistInfo()

    def __init__(self):
        self.scaler_g = torch.amp.GradScaler("cpu", enabled=False)
        self.scaler_d = torch.amp.GradScaler("cpu", enabled=False)

    def autocast(self):
        return contextlib.nullcontext()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return x


def g_step(m, opt_g: torch.optim.Optimizer, a: torch.Tensor, b: torch.Tensor, cfg: PipelineConfig, ctx=None):
    """Update both generators; returns (losses, fake_a, fake_b) — the fakes go to the discriminators. ``m``: the
    networks G_ab, G_ba, D_a, D_b (as the steps call them); ``ctx``: AMP, DiffAugment and ranks (default: off,
    one rank)."""
    ctx = ctx if ctx is not None else _Plain()
    tc = cfg.train
    lam, lam_id = tc.cycle_weight, tc.identity_weight * tc.cycle_weight
    opt_g.zero_grad(set_to_none=True)
    for D in (m.D_a, m.D_b):
        D.requires_grad_(False)
    try:
        with ctx.autocast():
            fake_b, fake_a = m.G_ab(a), m.G_ba(b)
            adv = g_loss("lsgan", m.D_b(ctx.augment(fake_b)).float()) + g_loss(
                "lsgan", m.D_a(ctx.augment(fake_a)).float()
            )
            cycle = F.l1_loss(m.G_ba(fake_b).float(), a) + F.l1_loss(m.G_ab(fake_a).float(), b)
            identity = (
                F.l1_loss(m.G_ab(b).float(), b) + F.l1_loss(m.G_ba(a).float(), a) if lam_id > 0 else a.new_zeros(())
            )
        loss = adv + lam * cycle + lam_id * identity
        ctx.scaler_g.scale(loss).backward()
    finally:
        for D in (m.D_a, m.D_b):
            D.requires_grad_(True)
    for G in (m.G_ab, m.G_ba):
        average_gradients(G, ctx.dist.world_size)
    ctx.scaler_g.step(opt_g)
    ctx.scaler_g.update()
    losses = {
        "loss_g": loss.detach(),
        "loss_g_adv": adv.detach(),
        "cycle_l1": cycle.detach(),
        "idt_l1": identity.detach(),
    }
    return losses, fake_a.detach().float(), fake_b.detach().float()


def d_step(m, opt_d: torch.optim.Optimizer, real_a, real_b, fake_a, fake_b, ctx: StepContext | None = None) -> dict:
    """Update both discriminators on real images and (pooled) fakes; each loss halved, as in the paper."""
    ctx = ctx if ctx is not None else _Plain()
    opt_d.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss_a = d_loss("lsgan", m.D_a(ctx.augment(real_a)).float(), m.D_a(ctx.augment(fake_a)).float())
        loss_b = d_loss("lsgan", m.D_b(ctx.augment(real_b)).float(), m.D_b(ctx.augment(fake_b)).float())
    ctx.scaler_d.scale(loss_a + loss_b).backward()
    for D in (m.D_a, m.D_b):
        average_gradients(D, ctx.dist.world_size)
    ctx.scaler_d.step(opt_d)
    ctx.scaler_d.update()
    return {"loss_d_a": loss_a.detach(), "loss_d_b": loss_b.detach()}


@torch.no_grad()
def translation_rows(G_ab: nn.Module, G_ba: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows input A / A→B / A→B→A / input B / B→A / B→A→B, as one N×C×H×W batch in [-1, 1]."""
    fake_b, fake_a = G_ab(a), G_ba(b)
    return torch.cat([a, fake_b, G_ba(fake_b), b, fake_a, G_ab(fake_a)])


def grid_png(rows: torch.Tensor, ncol: int) -> bytes:
    from ...generate import png_bytes, tile_grid, to_uint8_images

    return png_bytes(tile_grid(to_uint8_images(rows), ncol))


def load_domain(path: str | Path, cfg: PipelineConfig, domain: str):
    """(domain ``domain``'s images as a uint8 tensor, its manifest)."""
    ds = load_dataset(path)
    expected = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    if tuple(ds.images.shape[1:]) != expected:
        raise TrainingError(
            f"domain {domain.upper()} dataset {path} holds images of shape {tuple(ds.images.shape[1:])}, but the "
            f"config expects {expected}; prepare it with the same config"
        )
    return torch.from_numpy(np.array(ds.images)), ds.manifest


def cycle_steps_per_epoch(n_a: int, n_b: int, cfg: PipelineConfig) -> int:
    """An epoch is one pass over the smaller domain (the larger one is sampled by its own permutation)."""
    steps = min(n_a, n_b) // cfg.train.batch_size
    if steps == 0:
        raise TrainingError(
            f"the domains hold {n_a} and {n_b} images, fewer than one batch ({cfg.train.batch_size}); lower "
            "train.batch_size or use more data (data.limit)"
        )
    return steps


class CycleGanRecipe(Recipe):
    """Unpaired translation A ↔ B; checkpoint keys CYCLEGAN_STATE_KEYS. Its data: (domain A dir, domain B dir)."""

    summary_keys = ("loss_g", "cycle_l1", "loss_d_a", "loss_d_b")

    def __init__(self, cfg: PipelineConfig, ctx: StepContext):
        if cfg.model.arch != "cyclegan":
            raise TrainingError(
                f"the cyclegan recipe trains the cyclegan preset; {cfg.name} has model.arch={cfg.model.arch!r}"
            )
        if cfg.train.n_critic != 1:
            raise ConfigError(
                f"train.n_critic={cfg.train.n_critic}: a cyclegan step updates both generators, then both "
                "discriminators once on the pooled fakes; set train.n_critic=1"
            )
        super().__init__(cfg, ctx)

    def load_data(self, data) -> TrainData:
        cfg, dist = self.cfg, self.ctx.dist
        (real_a, man_a), (real_b, man_b) = (load_domain(p, cfg, d) for p, d in zip(data, "ab"))
        per_epoch = cycle_steps_per_epoch(len(real_a), len(real_b), cfg)
        batches = [Batches(r, cfg, dist, seed=step_seed(cfg.train.seed, 7, d)) for d, r in enumerate((real_a, real_b))]
        fixed = [to_float(r[:N_GRID]).to(dist.device) for r in (real_a, real_b)]
        sha = hashlib.sha256(f"{man_a.get('sha256')}+{man_b.get('sha256')}".encode()).hexdigest()
        return TrainData(
            steps_per_epoch=per_epoch,
            n_steps=capped_steps(per_epoch, cfg),
            images_per_step=cfg.train.batch_size * 2,
            manifest={"sha256": sha},
            source=f"{data[0]} and {data[1]}",
            payload=SimpleNamespace(batches=batches, fixed=fixed),
        )

    def build(self) -> TrainState:
        m, opt_g, opt_d = build_cycle_state(self.cfg, self.ctx.dist.device)
        pool = self.cfg.train.pool_size
        return TrainState(
            modules={k: getattr(m, k) for k in NETWORKS},
            ema=(("G_ab_ema", "G_ab"), ("G_ba_ema", "G_ba")),
            optimizers={"opt_G": opt_g, "opt_D": opt_d},
            extra={"pools": [ImagePool(pool), ImagePool(pool)]},
        )

    def check_checkpoint(self, ckpt: dict, path: Path) -> None:
        missing = [k for k in CYCLEGAN_STATE_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path} lacks {', '.join(missing)}, so a cyclegan run cannot resume from it (is it another "
                "preset's checkpoint?). Fix: train into a fresh --out directory"
            )

    def step(self, state: TrainState, data: TrainData, step: int) -> dict:
        tc, device = self.cfg.train, self.ctx.dist.device
        epoch, index = divmod(step, data.steps_per_epoch)
        a, b = (to_float(batches.get(epoch, index)).to(device) for batches in data.payload.batches)
        nets = SimpleNamespace(**{k: state.trained(k) for k in ("G_ab", "G_ba", "D_a", "D_b")})
        losses, fake_a, fake_b = g_step(nets, state.optimizers["opt_G"], a, b, self.cfg, self.ctx)
        pools = state.extra["pools"]
        pooled = [
            pools[d].query(f, torch.Generator().manual_seed(step_seed(tc.seed, 6, step, d)))
            for d, f in ((0, fake_a), (1, fake_b))
        ]
        losses.update(d_step(nets, state.optimizers["opt_D"], a, b, *pooled, ctx=self.ctx))
        return losses

    def checkpoint_extra(self, state: TrainState) -> dict:
        shape = (self.cfg.data.channels, self.cfg.data.resolution, self.cfg.data.resolution)
        return {"pool_a": state.extra["pools"][0].state(shape), "pool_b": state.extra["pools"][1].state(shape)}

    def restore_extra(self, state: TrainState, ckpt: dict) -> None:
        device, size = self.ctx.dist.device, self.cfg.train.pool_size
        state.extra["pools"] = [ImagePool(size, ckpt[k].to(device)) for k in ("pool_a", "pool_b")]

    def write_samples(self, state: TrainState, data: TrainData, out_dir: Path, tag: str) -> Path:
        png = out_dir / SAMPLES_DIR / f"{tag}.png"
        rows = translation_rows(state["G_ab_ema"], state["G_ba_ema"], *data.payload.fixed)
        atomic_write_bytes(png, grid_png(rows.cpu(), N_GRID))
        return png

    def snapshot(self, state: TrainState, out_dir: Path, step: int, epoch: int) -> Path:
        """Both EMA generators at the end of an epoch (``ganforge.cyclegan.load_translators`` reads it)."""
        return write_checkpoint(
            snapshot_path(out_dir, epoch),
            {
                "G_ab_ema": state["G_ab_ema"].state_dict(),
                "G_ba_ema": state["G_ba_ema"].state_dict(),
                "step": step,
                "epoch": epoch,
                "config": self.cfg.to_dict(),
            },
        )
