"""Paired editing data (``pix2pix``) built from one image source: (degraded input, target) pairs.

- ``sr``: the input is the target area-downsampled to half its side (28 → 14 px: each output pixel the
  rounded mean of a 2×2 block). The generator sees it bicubic-upsampled back to full size.
- ``inpaint``: the input is the target with a hole filled by the mean of the image's visible pixels (per
  channel), and the generator also sees the hole mask as a channel. Holes (``data.mask``): ``centre`` (the
  central square of half the side: 14×14 at 28 px), ``random`` (a box of sides between a quarter and
  three quarters of the image at a uniform position) or ``mixed`` (each image centre or random with
  probability ½). Random draws are a function of (``data.mask_seed``, split, image index), so a split's
  masks are the same on every prep and differ between train and test.

A paired dataset directory is a prepared dataset (``data.npy``: the targets, ``labels.npy`` when the
source is labelled, ``manifest.json``) plus ``input.npy`` (the degraded inputs, uint8) and, for
inpainting, ``mask.npy`` (N×1×H×W uint8, 1 in the hole). The targets alone are an ordinary dataset,
so they serve as the FID reference as any prepared split does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .data import RawDataset, build_manifest, load_array, load_dataset, local_sources, read_source, write_dataset_files
from .fileio import atomic_dir, check_output_dir
from .manifest import DataError, save_array, sha256_of_array

TASKS = ("sr", "inpaint")
PAIRED_FILES = ("data.npy", "labels.npy", "input.npy", "mask.npy", "manifest.json")
SPLIT_CODES = {"train": 0, "test": 1, "all": 2}
SR_FACTOR = 2


@dataclass(frozen=True)
class PairedDataset:
    """A paired dataset directory: targets N×C×H×W, inputs (sr: N×C×H/2×W/2; inpaint: N×C×H×W), masks
    (inpaint: N×1×H×W, 1 = hole; sr: None), all uint8 and memory-mapped; its manifest."""

    targets: np.ndarray
    inputs: np.ndarray
    masks: np.ndarray | None
    manifest: dict
    path: Path


def paired_files(manifest: dict) -> tuple[str, ...]:
    """The files of an earlier paired dataset (``check_output_dir``); KeyError if it is not one of ours."""
    if "sha256" not in manifest or "count" not in manifest:
        raise KeyError("not a manifest written by ganforge prep")
    return PAIRED_FILES


def area_downsample(images_u8: np.ndarray, factor: int = SR_FACTOR) -> np.ndarray:
    """N×C×H×W uint8 → N×C×(H/factor)×(W/factor) uint8: each pixel the mean of its factor×factor block,
    rounded half up (integer arithmetic, so the same on every machine)."""
    n, c, h, w = images_u8.shape
    if h % factor or w % factor:
        raise DataError(f"super-resolution needs a side divisible by {factor}; the images are {h}×{w} px")
    blocks = np.asarray(images_u8, dtype=np.int32).reshape(n, c, h // factor, factor, w // factor, factor)
    area = factor * factor
    return ((blocks.sum(axis=(3, 5)) + area // 2) // area).astype(np.uint8)


def centre_box(resolution: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre hole: a square of half the side (7, 7, 14, 14 at 28 px)."""
    side = resolution // 2
    start = (resolution - side) // 2
    return start, start, side, side


def random_box(resolution: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box with sides uniform in [side/4, 3·side/4] at a uniform position inside the image."""
    lo, hi = resolution // 4, (3 * resolution) // 4
    h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    top, left = int(rng.integers(0, resolution - h + 1)), int(rng.integers(0, resolution - w + 1))
    return top, left, h, w


def make_masks(n: int, resolution: int, kind: str, seed: int, split: str) -> np.ndarray:
    """N×1×R×R uint8 hole masks (1 in the hole) of ``kind`` centre/random/mixed; image i's draws come from
    a generator seeded by (seed, split, i), so a mask does not depend on how many images are prepared."""
    if kind not in ("centre", "random", "mixed"):
        raise DataError(f"data.mask={kind!r} is not valid; choose 'centre', 'random' or 'mixed'")
    masks = np.zeros((n, 1, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODES.get(split, 2), i])
        use_centre = kind == "centre" or (kind == "mixed" and rng.random() < 0.5)
        top, left, h, w = centre_box(resolution) if use_centre else random_box(resolution, rng)
        masks[i, 0, top : top + h, left : left + w] = 1
    return masks


def mean_fill(images_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The images with each hole set to the mean of that image's visible pixels (per channel, rounded)."""
    x = np.asarray(images_u8, dtype=np.float64)
    hole = np.broadcast_to(np.asarray(masks, dtype=bool), x.shape)
    visible = (~hole).sum(axis=(2, 3), keepdims=True)
    if (visible == 0).any():
        raise DataError("a mask covers a whole image; mean-fill needs at least one visible pixel")
    means = np.where(hole, 0.0, x).sum(axis=(2, 3), keepdims=True) / visible
    return np.where(hole, np.rint(means), x).astype(np.uint8)


def degrade(targets_u8: np.ndarray, data: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, masks) of ``data.task`` for the targets of ``split``."""
    if data.task == "sr":
        return area_downsample(targets_u8), None
    if data.task == "inpaint":
        masks = make_masks(len(targets_u8), targets_u8.shape[-1], data.mask, data.mask_seed, split)
        return mean_fill(targets_u8, masks), masks
    raise DataError(f"data.task={data.task!r} is not a paired editing task; choose one of {', '.join(TASKS)}")


def prepare_paired(data: DataConfig, out_dir: str | os.PathLike, split: str | None = None) -> dict:
    """Prepare the pairs of ``data.task`` from ``data.source``'s ``split`` into the directory ``out_dir``
    (written whole and atomically; an earlier paired dataset there is replaced, anything else refused).
    Returns the manifest: the targets' as for any prepared split, plus task, mask, mask_seed and the
    inputs' (and masks') shape and sha256."""
    split = split or data.split
    if data.task not in TASKS:
        raise DataError(f"data.task={data.task!r}: paired prep needs 'sr' or 'inpaint' (the pix2pix presets)")
    if data.kind != "image":
        raise DataError("paired editing data are images: set data.kind='image'")
    check_output_dir(
        out_dir,
        command="ganforge prep",
        manifest="manifest.json",
        owned_files=paired_files,
        protect=local_sources(data.source),
    )
    raw, recorded_split = read_source(data, split)
    targets = np.ascontiguousarray(raw.images)
    inputs, masks = degrade(targets, data, recorded_split)
    manifest = build_manifest(data.source, recorded_split, raw)
    manifest.update(
        task=data.task,
        input_shape=list(inputs.shape),
        input_sha256=sha256_of_array(inputs),
        mask=data.mask if masks is not None else None,
        mask_seed=data.mask_seed if masks is not None else None,
        mask_sha256=sha256_of_array(masks) if masks is not None else None,
    )
    with atomic_dir(out_dir) as tmp:
        write_dataset_files(Path(tmp), RawDataset(targets, raw.labels, raw.class_names), manifest)
        save_array(Path(tmp) / "input.npy", inputs)
        if masks is not None:
            save_array(Path(tmp) / "mask.npy", masks)
    return manifest


def load_paired(path: str | os.PathLike, data: DataConfig | None = None) -> PairedDataset:
    """Open a paired dataset; checks the inputs (and masks) against the manifest and, given ``data``,
    that its task is ``data.task``. DataError naming the file and the fix otherwise."""
    ds = load_dataset(path)
    root, manifest = ds.path, ds.manifest
    task = manifest.get("task")
    if task not in TASKS:
        raise DataError(
            f"{root} is not a paired editing dataset (its manifest has no task); prepare one with "
            "`ganforge prep --preset pix2pix-sr` or `--preset pix2pix-inpaint`"
        )
    if data is not None and task != data.task:
        raise DataError(
            f"{root} holds {task} pairs but the config's data.task is {data.task!r}; prepare the data with "
            "the same preset as the run"
        )
    inputs = load_array(root / "input.npy")
    if list(inputs.shape) != list(manifest.get("input_shape", [])) or inputs.dtype != np.uint8:
        raise DataError(
            f"{root / 'input.npy'} is {inputs.dtype} {list(inputs.shape)} but its manifest says uint8 "
            f"{manifest.get('input_shape')}; re-create the dataset with `ganforge prep`"
        )
    masks = None
    if task == "inpaint":
        masks = load_array(root / "mask.npy")
        expected = [len(ds.images), 1, *ds.images.shape[2:]]
        if list(masks.shape) != expected or masks.dtype != np.uint8:
            raise DataError(
                f"{root / 'mask.npy'} is {masks.dtype} {list(masks.shape)}, expected uint8 {expected}; re-create "
                "the dataset with `ganforge prep`"
            )
    return PairedDataset(ds.images, inputs, masks, manifest, root)


def upsample(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Low-resolution images in [-1, 1] bicubic-upsampled to ``resolution`` and clamped: sr's condition."""
    return F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def condition(inputs_u8: torch.Tensor, masks: torch.Tensor | None, task: str, resolution: int) -> torch.Tensor:
    """The generator's input in [-1, 1]: sr: the input bicubic-upsampled to ``resolution`` (clamped);
    inpaint: the mean-filled image and the mask (hole +1, visible -1) as one more channel."""
    x = inputs_u8.float().div(127.5).sub(1.0)
    if task == "sr":
        return upsample(x, resolution)
    if masks is None:
        raise DataError("inpainting needs the hole masks beside the images")
    return torch.cat([x, masks.float().mul(2.0).sub(1.0)], dim=1)
