"""Recipes: what differs between families, behind one contract the training loop drives.

A recipe (one per ``model.arch``, registered in RECIPES) says how a family reads its data, builds its
state, takes one training step (its D and G updates), what its checkpoint holds besides the common
entries, and how it draws its samples. The loop (``ganforge.training.loop``) owns everything else: ranks,
resume, per-step seeding, EMA updates, the non-finite check, logging, checkpoint and sample cadence,
snapshots, graceful stop. A new family is one class below and one RECIPES entry.

The contract (``Recipe``)::

    Recipe(cfg, ctx)                              cfg: PipelineConfig, ctx: StepContext (device, ranks, AMP)
    .load_data(data) -> TrainData                 data: the family's input(s) (a directory, or a pair)
    .build() -> TrainState                        seeded: identical networks on every rank
    .check_checkpoint(ckpt, path)                 CheckpointError unless ckpt is this family's training state
    .step(state, data, step) -> dict              one training step's D and G updates; metrics as tensors
    .checkpoint_extra(state) -> dict              entries beyond networks/optimisers/scalers (image pools)
    .restore_extra(state, ckpt)                   the inverse of checkpoint_extra
    .write_samples(state, data, dir, tag) -> Path the sample grid of the EMA networks
    .snapshot(state, out_dir, step, epoch) -> Path the EMA networks alone
    .summary_keys                                 metrics shown on the progress line
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import PipelineConfig
from ..state import StepContext, TrainState

RECIPES: dict[str, str] = {
    "mlp": "ganforge.training.recipes.gan:GanRecipe",
    "dcgan": "ganforge.training.recipes.gan:GanRecipe",
    "stylegan": "ganforge.training.recipes.gan:GanRecipe",
    "wavegan": "ganforge.training.recipes.gan:GanRecipe",
    "cyclegan": "ganforge.training.recipes.cyclegan:CycleGanRecipe",
    "pix2pix": "ganforge.training.recipes.pix2pix:Pix2PixRecipe",
}
"""model.arch → "module:Class" of its recipe (imported when a run of that family starts)."""


@dataclass
class TrainData:
    """A family's training data, read once: what the loop needs to know, and the recipe's own ``payload``."""

    steps_per_epoch: int
    n_steps: int
    images_per_step: int
    """Real images one step consumes over all ranks (for img/s)."""
    manifest: dict
    """Its ``sha256`` is recorded in checkpoints and compared on ``--resume``."""
    source: str
    """How to name the data in messages."""
    payload: Any = None
    run_files: dict[str, str] = field(default_factory=dict)
    """File name → text, written beside checkpoint.pt before the first step (classes.json)."""


class Recipe:
    """The contract (see the module docstring); subclasses implement every method that raises here."""

    summary_keys: tuple[str, ...] = ("loss_d", "loss_g")

    def __init__(self, cfg: PipelineConfig, ctx: StepContext):
        self.cfg, self.ctx = cfg, ctx

    def load_data(self, data) -> TrainData:
        raise NotImplementedError

    def build(self) -> TrainState:
        raise NotImplementedError

    def check_checkpoint(self, ckpt: dict, path: Path) -> None:
        raise NotImplementedError

    def step(self, state: TrainState, data: TrainData, step: int) -> dict:
        raise NotImplementedError

    def checkpoint_extra(self, state: TrainState) -> dict:
        return {}

    def restore_extra(self, state: TrainState, ckpt: dict) -> None:
        return None

    def write_samples(self, state: TrainState, data: TrainData, out_dir: Path, tag: str) -> Path:
        raise NotImplementedError

    def snapshot(self, state: TrainState, out_dir: Path, step: int, epoch: int) -> Path:
        raise NotImplementedError


def recipe_class(arch: str) -> type[Recipe]:
    if arch not in RECIPES:
        raise ValueError(f"no training recipe for model.arch {arch!r}; known: {', '.join(sorted(RECIPES))}")
    module, _, name = RECIPES[arch].partition(":")
    return getattr(importlib.import_module(module), name)


def recipe_for(cfg: PipelineConfig, ctx: StepContext) -> Recipe:
    """The recipe of cfg's family."""
    return recipe_class(cfg.model.arch)(cfg, ctx)
