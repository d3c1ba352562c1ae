"""Unpaired image-to-image translation (CycleGAN, Zhu et al. 2017): domain prep, training, resume.

Two domains A and B, each a prepared dataset directory (``prepare_domain``): by default two classes of
one labelled source (Fashion-MNIST sneaker 7 ↔ ankle boot 9, chosen by the IDX labels), or two image
folders (``data.source`` and ``data.source_b``). Training follows the paper's recipe: least-squares GAN
loss, cycle-consistency L1 with λ = ``train.cycle_weight``, identity L1 with ``identity_weight``·λ, a pool
of past fakes per discriminator, Adam; plus an EMA copy of both generators (used to translate and
evaluate).

Training is the one training loop's (``ganforge.training.loop``) with the cyclegan recipe
(``ganforge.training.recipes.cyclegan``: the steps, the pools, the checkpoint entries, the sample grid); its
networks and image pool are in ``ganforge.models.cyclegan``. This module keeps domain preparation, the
``train_cyclegan`` entry point and the translators read back from a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CheckpointError, checkpoint_file, load_state, read_checkpoint
from .config import DataConfig, PipelineConfig
from .data import RawDataset, build_manifest, local_sources, prepared_files, read_source, write_dataset_files
from .fileio import atomic_dir, check_output_dir
from .losses import ls_loss
from .manifest import DataError
from .models import build_models
from .models.cyclegan import CycleModels, ImagePool
from .training.errors import TrainingError
from .training.loop import train
from .training.recipes.cyclegan import (
    N_GRID,
    CycleGanRecipe,
    build_cycle_state,
    cycle_steps_per_epoch,
    d_step,
    g_step,
    grid_png,
    load_domain,
    translation_rows,
)
from .training.state import TrainResult

DOMAINS = ("a", "b")


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


def train_cyclegan(
    cfg: PipelineConfig,
    data_a: str | Path,
    data_b: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_metrics: Callable[[int, dict], None] | None = None,
    **kwargs,
) -> TrainResult:
    """Train a cyclegan run on the prepared domains ``data_a`` and ``data_b``; writes checkpoint.pt,
    config.json and samples/epoch_NNN.png (input / translated / reconstructed rows) into ``out_dir``.
    The one training loop (``ganforge.training.loop.train``) runs it, with its keyword arguments
    (``allow_config_change``, ``allow_data_change``, ``on_checkpoint``, ``dist_info``…); ``resume`` continues
    from ``out_dir/checkpoint.pt`` when it exists. SIGTERM and SIGINT stop it at a step boundary with a
    checkpoint at that step (``stop.Stopped`` raised)."""
    if cfg.model.arch != "cyclegan":
        raise TrainingError(f"train_cyclegan trains the cyclegan preset; {cfg.name} has model.arch={cfg.model.arch!r}")
    return train(cfg, (data_a, data_b), out_dir, resume=resume, on_metrics=on_metrics, **kwargs)


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


__all__ = [
    "DIRECTION_INDEX",
    "DOMAINS",
    "N_GRID",
    "CycleGanRecipe",
    "CycleModels",
    "CycleTranslator",
    "ImagePool",
    "OneDirection",
    "build_cycle_state",
    "cycle_steps_per_epoch",
    "d_step",
    "domain_data_config",
    "g_step",
    "grid_png",
    "load_domain",
    "load_translators",
    "ls_loss",
    "prepare_domain",
    "train_cyclegan",
    "translation_rows",
    "translators_from",
]
