"""Scores of a paired editor (``pix2pix``) on held-out pairs, beside the plain baseline of its task.

Per image, against the target: PSNR and SSIM from torchmetrics (``torchmetrics.functional``: PSNR with
data range 1 averaged over images; SSIM with its 11×11 Gaussian window, σ = 1.5), on images in [0, 1].
Over the set: FID and KID of the edited images against the real test images (the targets, a prepared
dataset: ``ganforge.metrics.evaluate_images``, real features cached by the dataset's sha256 as for every
FID here). The same scores of the baseline — ``bicubic`` upsampling for ``sr``, ``mean-fill`` for
``inpaint`` (the degraded input itself) — go in a ``baseline`` block, so a row shows what the GAN adds.

Inpainting output keeps the visible pixels of the input and takes the generator's only inside the hole
(``edit.composite``); the baseline keeps them too, so both are judged on the hole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import EvalConfig, PipelineConfig
from .errors import GanforgeError
from .fileio import atomic_write_bytes, atomic_write_text

GRID_NAME = "edits.png"
N_GRID = 8
BASELINES = {"sr": "bicubic", "inpaint": "mean-fill"}


class EditMetricsError(GanforgeError, RuntimeError):
    """A score cannot be computed here; the message says what to install or change."""


def _torchmetrics_functional():
    try:
        import torchmetrics.functional.image as tmf
    except ImportError as e:
        raise EditMetricsError(
            f"PSNR and SSIM of edited images come from torchmetrics, which is not importable here ({e}). Fix: "
            "install the project's pinned torchmetrics (pip install torchmetrics==1.9.0 lightning-utilities==0.15.3)"
        ) from None
    return tmf


def _unit(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.array(images_u8)).to(torch.float64).div(255.0)


def psnr(pred_u8, target_u8) -> float:
    """Mean over images of each image's PSNR (dB, data range 1) against its target."""
    tmf = _torchmetrics_functional()
    return float(tmf.peak_signal_noise_ratio(_unit(pred_u8), _unit(target_u8), data_range=1.0, dim=(1, 2, 3)))


def ssim(pred_u8, target_u8) -> float:
    """Mean SSIM (Wang et al. 2004; 11×11 Gaussian window, σ 1.5, data range 1) against the targets."""
    tmf = _torchmetrics_functional()
    return float(tmf.structural_similarity_index_measure(_unit(pred_u8), _unit(target_u8), data_range=1.0))


def baseline_images(inputs_u8: np.ndarray, masks: np.ndarray | None, cfg: PipelineConfig) -> np.ndarray:
    """The task's plain baseline: bicubic upsampling of the low-resolution inputs (sr) or the mean-filled
    inputs themselves (inpaint), uint8 N×C×H×W."""
    from .edit_data import condition
    from .generate import to_uint8_images

    if cfg.data.task == "inpaint":
        return np.asarray(inputs_u8)
    x = torch.from_numpy(np.array(inputs_u8))
    return to_uint8_images(condition(x, None, "sr", cfg.data.resolution)).numpy()


def scores(images_u8: np.ndarray, targets_u8: np.ndarray, reference_dir, eval_cfg, cache_dir, choice) -> dict:
    """PSNR/SSIM against the targets and FID/KID against the reference dataset."""
    from .metrics import evaluate_images

    fid = evaluate_images(images_u8, reference_dir, eval_cfg, cache_dir, choice)
    return {
        "psnr": psnr(images_u8, targets_u8),
        "ssim": ssim(images_u8, targets_u8),
        "fid": fid["fid"],
        "kid_mean": fid["kid_mean"],
        "kid_std": fid["kid_std"],
        "extractor": fid["extractor"],
        "resize": fid["resize"],
    }


def evaluate_editing(
    G: nn.Module,
    cfg: PipelineConfig,
    test_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    eval_cfg: EvalConfig | None = None,
    choice=None,
) -> dict:
    """Edit the first ``eval.n_samples`` held-out pairs of ``test_dir`` (``ganforge prep --preset pix2pix-…
    --split test``) and score them and the baseline; writes ``out_dir/metrics.json`` and the grid
    ``out_dir/edits.png`` (rows: the input as given / baseline / edited / target)."""
    from .edit import edit_arrays
    from .edit_data import SR_FACTOR, load_paired
    from .generate import png_bytes, tile_grid

    eval_cfg = eval_cfg or cfg.eval
    ds = load_paired(test_dir, cfg.data)
    n = min(eval_cfg.n_samples, len(ds.targets))
    targets = np.asarray(ds.targets[:n])
    inputs = np.asarray(ds.inputs[:n])
    masks = np.asarray(ds.masks[:n]) if ds.masks is not None else None
    edited = edit_arrays(G, cfg, inputs, masks).numpy()
    baseline = baseline_images(inputs, masks, cfg)
    ours = scores(edited, targets, test_dir, eval_cfg, cache_dir, choice)
    base = scores(baseline, targets, test_dir, eval_cfg, cache_dir, choice)
    metrics = {
        "task": cfg.data.task,
        **{k: ours[k] for k in ("psnr", "ssim", "fid", "kid_mean", "kid_std")},
        "baseline": {"name": BASELINES[cfg.data.task], **{k: base[k] for k in ("psnr", "ssim", "fid", "kid_mean")}},
        "n": n,
        "extractor": ours["extractor"],
        "resize": ours["resize"],
    }
    k = min(N_GRID, n)
    # the input as given: sr's half-size images shown at full size, pixel for pixel (nearest neighbour)
    seen = inputs[:k].repeat(SR_FACTOR, axis=2).repeat(SR_FACTOR, axis=3) if cfg.data.task == "sr" else inputs[:k]
    rows = torch.from_numpy(np.concatenate([seen, baseline[:k], edited[:k], targets[:k]]))
    out = Path(out_dir)
    metrics["grid"] = str(atomic_write_bytes(out / GRID_NAME, png_bytes(tile_grid(rows, k))))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_editing_run(
    path: str | os.PathLike, test_dir: str | os.PathLike, out_dir: str | os.PathLike, cache_dir, n: int | None = None
) -> dict:
    """``evaluate_editing`` of a pix2pix run directory (or its checkpoint.pt) with its EMA generator; ``n``
    held-out pairs (default eval.n_samples). Adds the checkpoint's ``step``."""
    import dataclasses

    from .checkpoint import checkpoint_file, read_checkpoint
    from .pix2pix import load_editor

    path = checkpoint_file(path)
    G, cfg = load_editor(path)
    eval_cfg = dataclasses.replace(cfg.eval, n_samples=n) if n else cfg.eval
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metrics = evaluate_editing(G, cfg, test_dir, out_dir, cache_dir, eval_cfg)
    metrics["step"] = int(read_checkpoint(path)["step"])
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
