"""The recipe of the latent-noise families (gan, dcgan, cdcgan, sngan, wgan-gp, stylegan, wavegan): n_critic D
steps on real batches and G(z), then one G step; the BCE, hinge or WGAN-GP loss, lazy R1 and style mixing
as the config asks; a G_ema copy; a fixed-noise sample grid."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...checkpoint import SAMPLES_DIR, require_training_state, write_snapshot
from ...config import PipelineConfig
from ...data import load_dataset
from ...losses import d_loss, g_loss, gradient_penalty, r1_penalty
from ...models import build_models
from ..batches import Batches, global_labels, global_noise, step_seed, steps_per_epoch, to_float, total_steps
from ..dist import DistInfo, average_gradients
from ..errors import TrainingError
from ..sampling import CLASSES_FILE, classes_json, fixed_noise, write_samples
from ..state import StepContext, TrainState
from . import Recipe, TrainData


def style_mixing(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo, num_ws: int) -> dict:
    """Style-mixing regularisation (StyleGAN): G's extra arguments for (step, iteration k) — with probability
    ``train.style_mixing`` a second latent (this rank's slice of a global batch) whose styles replace the first's
    from a crossover index drawn uniformly in [1, num_ws), one index for the whole batch as in stylegan2-ada;
    otherwise none. A function of (seed, step, k) only, like the noise, so a resumed run mixes the same way."""
    if not cfg.train.style_mixing:
        return {}
    g = torch.Generator().manual_seed(step_seed(cfg.train.seed, 6, step, k))
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


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    ctx: StepContext,
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
    ctx: StepContext,
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


class GanRecipe(Recipe):
    """G(z) against D(x) (see the module docstring); checkpoint keys G, G_ema, D (TRAINING_STATE_KEYS)."""

    def load_data(self, data_dir) -> TrainData:
        cfg = self.cfg
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
        return TrainData(
            steps_per_epoch=steps_per_epoch(len(data), cfg),
            n_steps=total_steps(len(data), cfg),
            images_per_step=cfg.train.batch_size * cfg.train.n_critic,
            manifest=ds.manifest,
            source=str(data_dir),
            payload=Batches(data, cfg, self.ctx.dist, labels),
            run_files={} if labels is None else {CLASSES_FILE: classes_json(ds.manifest, cfg)},
        )

    def build(self) -> TrainState:
        G, D, G_ema, opt_g, opt_d = build_training_state(self.cfg, self.ctx.dist.device)
        return TrainState(
            modules={"G": G, "G_ema": G_ema, "D": D},
            ema=(("G_ema", "G"),),
            optimizers={"opt_G": opt_g, "opt_D": opt_d},
        )

    def check_checkpoint(self, ckpt: dict, path: Path) -> None:
        require_training_state(ckpt, path)

    def step(self, state: TrainState, data: TrainData, step: int) -> dict:
        cfg, ctx, dist = self.cfg, self.ctx, self.ctx.dist
        tc, batches, device = cfg.train, data.payload, dist.device
        G, D = state.trained("G"), state.trained("D")
        opt_g, opt_d = state.optimizers["opt_G"], state.optimizers["opt_D"]
        num_ws = getattr(state["G"], "num_ws", 0)  # style layers (stylegan), for style mixing
        epoch, in_epoch = divmod(step, data.steps_per_epoch)
        conditional = batches.labels is not None
        for k in range(tc.n_critic):
            real = ctx.prepare(to_float(batches.get(epoch, in_epoch * tc.n_critic + k)))
            cond = (
                {
                    "y_real": batches.get_labels(epoch, in_epoch * tc.n_critic + k).to(device),
                    "y_fake": global_labels(cfg, step, k, dist).to(device),
                }
                if conditional
                else {}
            )
            z = ctx.prepare(global_noise(cfg, step, k, dist))
            mixing = ctx.on_device(style_mixing(cfg, step, k, dist, num_ws))
            m = d_step(G, D, opt_d, real, z, ctx, **cond, apply_r1=r1_due(cfg, step, k), g_kwargs=mixing)
        last_r1 = state.extra.get("last_r1")
        if "r1" in m or last_r1 is not None:  # lazy R1: the latest value is logged until the next one
            m["r1"] = state.extra["last_r1"] = m.get("r1", last_r1)
        cond = {"y": global_labels(cfg, step, tc.n_critic, dist).to(device)} if conditional else {}
        z = ctx.prepare(global_noise(cfg, step, tc.n_critic, dist))
        mixing = ctx.on_device(style_mixing(cfg, step, tc.n_critic, dist, num_ws))
        m.update(g_step(G, D, opt_g, z, ctx, **cond, g_kwargs=mixing))
        return m

    def write_samples(self, state: TrainState, data: TrainData, out_dir: Path, tag: str) -> Path:
        if "z_fixed" not in state.extra:
            state.extra["z_fixed"] = fixed_noise(self.cfg)
        return write_samples(state["G_ema"], state.extra["z_fixed"], out_dir / SAMPLES_DIR, tag, self.cfg)

    def snapshot(self, state: TrainState, out_dir: Path, step: int, epoch: int) -> Path:
        return write_snapshot(out_dir, G_ema=state["G_ema"], step=step, epoch=epoch, cfg=self.cfg)
