"""The pix2pix recipe (Isola et al. 2017): paired editing data (``ganforge.edit_data``), a U-Net G and a
conditional PatchGAN D; per step one D update on (condition, target) against (condition, G(condition)),
then one G update on the adversarial loss plus ``train.l1_weight`` · L1 (``ganforge.pix2pix``); a G_ema
copy (what ``ganforge edit`` and the evaluation use); sample grids of input / edited / target rows.

Batches are a per-epoch permutation of the pairs seeded by (seed, epoch), and G's dropout draws from the
global RNG the loop reseeds every step, so a resumed run equals an uninterrupted one bit for bit (at equal
thread counts). One rank, fp32: the steps do not average gradients over ranks or scale losses for fp16.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ...checkpoint import SAMPLES_DIR, require_training_state, write_snapshot
from ...config import ConfigError, PipelineConfig
from ...fileio import atomic_write_bytes
from ...pix2pix import d_step, g_step, paired_batch
from ..batches import Batches, steps_per_epoch, total_steps
from ..errors import TrainingError
from ..state import StepContext, TrainState
from . import Recipe, TrainData
from .gan import build_training_state

N_GRID = 8
"""Pairs in the sample grids."""


class Pix2PixRecipe(Recipe):
    """Paired image editing; checkpoint keys G, G_ema, D (TRAINING_STATE_KEYS). Its data: a paired dataset
    directory (``ganforge prep --preset pix2pix-sr|pix2pix-inpaint``)."""

    summary_keys = ("loss_d", "loss_g", "l1")

    def __init__(self, cfg: PipelineConfig, ctx: StepContext):
        if cfg.model.arch != "pix2pix":
            raise TrainingError(
                f"the pix2pix recipe trains pix2pix presets; {cfg.name} has model.arch={cfg.model.arch!r}"
            )
        tc = cfg.train
        unsupported = [
            f"{name}={value!r}"
            for name, value, plain in (
                ("train.n_critic", tc.n_critic, 1),
                ("train.amp", tc.amp, "off"),
                ("train.diffaugment", tc.diffaugment, ""),
                ("train.r1_gamma", tc.r1_gamma, 0.0),
            )
            if value != plain
        ]
        if unsupported:
            raise ConfigError(
                f"{', '.join(unsupported)}: a pix2pix step is one D and one G update in fp32, without DiffAugment "
                "or R1; set train.n_critic=1, train.amp=off, train.diffaugment='' and train.r1_gamma=0"
            )
        super().__init__(cfg, ctx)

    def load_data(self, data_dir) -> TrainData:
        from ...edit_data import load_paired

        cfg = self.cfg
        ds = load_paired(data_dir, cfg.data)
        expected = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
        if tuple(ds.targets.shape[1:]) != expected:
            raise TrainingError(
                f"dataset {data_dir} holds images of shape {tuple(ds.targets.shape[1:])}, but the config expects "
                f"{expected}; prepare the data with the same config (`ganforge prep --preset {cfg.name}`)"
            )
        # read into memory once (the arrays are memory maps); batches are gathered and converted per step
        pairs = SimpleNamespace(
            targets=np.array(ds.targets),
            inputs=np.array(ds.inputs),
            masks=None if ds.masks is None else np.array(ds.masks),
        )
        n = len(pairs.targets)
        return TrainData(
            steps_per_epoch=steps_per_epoch(n, cfg),
            n_steps=total_steps(n, cfg),
            images_per_step=cfg.train.batch_size,
            manifest=ds.manifest,
            source=str(data_dir),
            payload=SimpleNamespace(pairs=pairs, order=Batches(torch.arange(n), cfg, self.ctx.dist)),
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
        epoch, index = divmod(step, data.steps_per_epoch)
        cond, target = paired_batch(data.payload.pairs, data.payload.order.get(epoch, index).numpy(), self.cfg)
        cond, target = self.ctx.prepare(cond), self.ctx.prepare(target)
        G, D = state.trained("G"), state.trained("D")
        m = d_step(G, D, state.optimizers["opt_D"], cond, target)
        m.update(g_step(G, D, state.optimizers["opt_G"], cond, target, self.cfg.train.l1_weight))
        return m

    def write_samples(self, state: TrainState, data: TrainData, out_dir: Path, tag: str) -> Path:
        """Rows: the input as the generator sees it (bicubic / mean-filled) / G_ema's edit / the target."""
        from ...edit import edit_arrays
        from ...edit_metrics import baseline_images
        from ...generate import png_bytes, tile_grid

        p = data.payload.pairs
        k = min(N_GRID, len(p.targets))
        masks = None if p.masks is None else p.masks[:k]
        seen = baseline_images(p.inputs[:k], masks, self.cfg)
        edited = edit_arrays(state["G_ema"], self.cfg, p.inputs[:k], masks).numpy()
        rows = torch.from_numpy(np.concatenate([seen, edited, p.targets[:k]]))
        return atomic_write_bytes(out_dir / SAMPLES_DIR / f"{tag}.png", png_bytes(tile_grid(rows, k)))

    def snapshot(self, state: TrainState, out_dir: Path, step: int, epoch: int) -> Path:
        return write_snapshot(out_dir, G_ema=state["G_ema"], step=step, epoch=epoch, cfg=self.cfg)
