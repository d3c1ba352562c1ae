"""Evaluate a trained generator: draw samples with a fixed seed, compare with real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import generator_from_checkpoint, read_checkpoint
from .config import PipelineConfig, with_overrides
from .errors import GanforgeError
from .fileio import atomic_write_text
from .paths import cache_dir as default_cache_dir
from .training.sampling import generate


class EvaluationError(GanforgeError, ValueError):
    """Bad evaluation input; the message says what to do."""


METRICS_RECORDS = (
    frozenset({"pipeline", "checkpoint", "generator"}),  # evaluate_checkpoint (and a run's metrics.json)
    frozenset({"cycle_l1_a", "cycle_l1_b", "grid"}),  # a cyclegan run's (ganforge.translate)
    frozenset({"task", "baseline", "grid"}),  # a pix2pix run's (ganforge.edit_metrics)
)
"""Keys that mark a metrics JSON ganforge wrote: ``evaluate --out`` replaces only a file holding one set."""


def is_metrics_json(d: object) -> bool:
    """Whether parsed JSON ``d`` is a metrics record ganforge's evaluation wrote (``METRICS_RECORDS``)."""
    return isinstance(d, dict) and any(keys <= d.keys() for keys in METRICS_RECORDS)


EVAL_SEED = 12345  # fixed: every checkpoint is judged on the same latent draws


LATENT_BLOCK = 16  # rows drawn per randn call: see eval_latents


def eval_latents(n: int, nz: int, seed: int = EVAL_SEED) -> torch.Tensor:
    """The evaluation's latent draw: the first m rows of a draw of n are the draw of m, for any m ≤ n.

    So an FID curve point at m samples and the final FID at n score the same first m images.
    One ``randn(n, nz)`` lacks this whenever n·nz is not a multiple of 16 (torch's vectorised
    normal sampler redraws a ragged tail); blocks of 16 rows never are, and for n·nz divisible
    by 16 they give exactly ``randn(n, nz)``'s values.
    """
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(LATENT_BLOCK, nz, generator=g) for _ in range(0, n, LATENT_BLOCK)]
    return torch.cat(blocks)[:n] if blocks else torch.empty(0, nz)


def eval_labels(n: int, cfg: PipelineConfig) -> torch.Tensor | None:
    """Class-conditional generators: the evaluation's class-balanced labels (i % K); None otherwise."""
    if not cfg.model.num_classes:
        return None
    from .labels import balanced_labels

    return torch.from_numpy(balanced_labels(n, cfg.model.num_classes))


def sample_for_eval(G: torch.nn.Module, cfg: PipelineConfig, n: int, seed: int = EVAL_SEED) -> torch.Tensor:
    return generate(
        G, eval_latents(n, cfg.model.nz, seed), batch_size=cfg.eval.batch_size * 4, labels=eval_labels(n, cfg)
    )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    n: int | None = None,
    cache: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    prefix_n: int | None = None,
    ckpt: dict | None = None,
    n_real: int | None = None,
    ema: bool = True,
    train_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    samples_out: dict | None = None,
) -> dict:
    """FID/KID (images) or the SC09 classifier scores (audio) of a checkpoint's generator; metrics.json if out.

    ``n`` generated samples against ``n_real`` real ones (images; default n, else the config's).
    ``prefix_n`` (images): also score the first prefix_n samples alone, as ``metrics["prefix"]``.
    ``ckpt``: the checkpoint's contents when the caller has read them already. ``ema=False``
    scores the raw generator instead (a full training checkpoint has both; a snapshot only the EMA).
    Class-conditional generators are sampled class-balanced and also get per-class FID and, with
    ``train_dir`` (the labelled training split), class accuracy (``ganforge.class_metrics``).
    ``workers``: CPU processes for the Inception features (default: GANFORGE_EVAL_WORKERS).
    ``samples_out``: a dict that receives the scored samples as ``"fake"`` (a CPU tensor).
    """
    if ckpt is None:
        ckpt = read_checkpoint(checkpoint)
    if not ema and "G" not in ckpt:
        raise EvaluationError(
            f"{checkpoint} holds only the EMA generator (a snapshot): score the raw generator "
            "from a training run's checkpoint.pt instead"
        )
    # sampled where the features are computed: on the GPU when there is one
    G, cfg = generator_from_checkpoint(ckpt, checkpoint, ema=ema, device="cuda" if torch.cuda.is_available() else "cpu")
    if n_real is not None and cfg.data.kind != "image":
        raise EvaluationError("n_real applies to image FID/KID only: leave it out for audio")
    n_fake = n if n is not None else cfg.eval.n_samples
    cfg = with_overrides(cfg, eval={"n_samples": n_real if n_real is not None else n_fake})
    cache = Path(cache) if cache else default_cache_dir()
    fake = sample_for_eval(G, cfg, n_fake)
    if samples_out is not None:
        samples_out["fake"] = fake
    if cfg.data.kind == "audio":
        from .audio_metrics import evaluate_audio

        metrics = evaluate_audio(fake.numpy(), data_dir, cfg.eval, cache)
    else:
        from .metrics import evaluate_images, fake_to_uint8

        fake_u8, features = fake_to_uint8(fake), {}
        metrics = evaluate_images(
            fake_u8, data_dir, cfg.eval, cache, prefix_n=prefix_n, features_out=features, workers=workers
        )
        if cfg.model.num_classes:
            from .class_metrics import class_scores

            metrics.update(
                class_scores(
                    fake_u8,
                    eval_labels(n_fake, cfg).numpy(),
                    features["fake"],
                    features["real"],
                    data_dir,
                    cfg.model.num_classes,
                    cache,
                    train_dir=train_dir,
                )
            )
    metrics = {
        "pipeline": cfg.name,
        "profile": cfg.profile,
        "checkpoint": str(checkpoint),
        "generator": "ema" if ema else "raw",
        **metrics,
    }
    if out:
        atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return metrics
