"""Sampling during training: the fixed noise and labels of the sample grid, generation in batches, the
grid PNG (or WAVs and spectrograms for audio), and the class names a class-conditional run records."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..audio_io import spectrogram_grid_png, write_wavs
from ..config import PipelineConfig
from ..fileio import atomic_file
from .batches import step_seed

N_FIXED_SAMPLES = 64
CLASSES_FILE = "classes.json"
"""Written beside checkpoint.pt by a class-conditional run: the training data's class names."""


def fixed_noise(cfg: PipelineConfig, n: int = N_FIXED_SAMPLES) -> torch.Tensor:
    return torch.randn(n, cfg.model.nz, generator=torch.Generator().manual_seed(step_seed(cfg.train.seed, 3)))


def fixed_labels(cfg: PipelineConfig, n: int = N_FIXED_SAMPLES) -> torch.Tensor | None:
    """Labels of the fixed sample grid: classes 0, 1, …, K-1 in turn; None for an unconditional run."""
    return torch.arange(n) % cfg.model.num_classes if cfg.model.num_classes else None


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


def classes_json(manifest: dict, cfg: PipelineConfig) -> str:
    """classes.json of a class-conditional run: its class names (ids as text when the data named none)."""
    from ..labels import class_names_or_ids

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
    from ..labels import class_names_or_ids

    path = Path(run_dir) / CLASSES_FILE
    names = json.loads(path.read_text()).get("class_names") if path.is_file() else None
    return class_names_or_ids(names, cfg.model.num_classes)
