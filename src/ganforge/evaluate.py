"""Evaluate a trained generator: draw samples with a fixed seed, compare with real data."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from .config import PipelineConfig, with_overrides
from .paths import cache_dir as default_cache_dir
from .storage import atomic_write_text
from .train import generate, load_generator

EVAL_SEED = 12345  # fixed: every checkpoint is judged on the same latent draws


def sample_for_eval(G: torch.nn.Module, cfg: PipelineConfig, n: int, seed: int = EVAL_SEED) -> torch.Tensor:
    z = torch.randn(n, cfg.model.nz, generator=torch.Generator().manual_seed(seed))
    return generate(G, z, batch_size=cfg.eval.batch_size * 4)


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, n: Optional[int] = None,
                        cache: Optional[str | os.PathLike] = None, out: Optional[str | os.PathLike] = None) -> dict:
    """FID/KID (images) or the SC09 classifier scores (audio) of the EMA generator; writes metrics.json if out."""
    G, cfg = load_generator(checkpoint)
    if n is not None:
        cfg = with_overrides(cfg, eval={"n_samples": n})
    cache = Path(cache) if cache else default_cache_dir()
    fake = sample_for_eval(G, cfg, cfg.eval.n_samples)
    if cfg.data.kind == "audio":
        from .audio_metrics import evaluate_audio

        metrics = evaluate_audio(fake.numpy(), data_dir, cfg.eval, cache)
    else:
        from .metrics import evaluate_images, fake_to_uint8

        metrics = evaluate_images(fake_to_uint8(fake), data_dir, cfg.eval, cache)
    metrics = {"pipeline": cfg.name, "profile": cfg.profile, "checkpoint": str(checkpoint), **metrics}
    if out:
        atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return metrics
