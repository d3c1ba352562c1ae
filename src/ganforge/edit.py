"""Edit images with a trained pix2pix run: super-resolve or inpaint a PNG/JPEG file or a folder of them.

Inputs are checked as ``ganforge translate`` checks its inputs — every file read and sized before
anything is written, nothing resized silently, a colour image refused by a grayscale model, an output
name that already exists refused — and each ``<stem>.png`` is written atomically into ``--out``.

- ``sr``: an input is an image of half the model's side (14×14 px for 28 px models); the output is the
  full-size image.
- ``inpaint``: an input is an image of the model's side whose alpha channel marks the hole (alpha < 128:
  missing); the hole is mean-filled from the visible pixels, as in training, and the output keeps the
  visible pixels and takes the generator's inside the hole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import PipelineConfig
from .data import is_color, open_image, to_mode
from .edit_data import SR_FACTOR, mean_fill
from .errors import OutputPathError
from .fileio import atomic_write_bytes
from .manifest import DataError
from .translate import TranslationError, input_files

ALPHA_HOLE = 128
"""Alpha below this marks a missing pixel of an inpainting input."""


def load_editor_model(model: str, device: str = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """(the editor, its config) from a pix2pix run directory / checkpoint.pt (its EMA generator as a
    ``pix2pix.Editor``), or from the registry (``models:/NAME@ALIAS``: the exported ``Editor`` a version
    holds, loaded by ``ganforge.generate.load_registered``), on ``device``."""
    from .generate import REGISTRY_SCHEME, load_registered
    from .pix2pix import as_editor, load_editor

    if not model.startswith(REGISTRY_SCHEME):
        G, cfg = load_editor(model, device)
        return as_editor(G, cfg), cfg
    loaded = load_registered(model, device)
    if loaded.cfg.model.arch != "pix2pix":
        raise TranslationError(
            f"{model} is a {loaded.cfg.name} model, not an image editor; edit with a pix2pix model "
            "(e.g. models:/pix2pix-sr@champion)"
        )
    return loaded.generator, loaded.cfg


def input_side(cfg: PipelineConfig) -> int:
    """The side of the images ``edit`` takes: half the model's for sr, the model's for inpaint."""
    r = cfg.data.resolution
    return r // SR_FACTOR if cfg.data.task == "sr" else r


def read_edit_input(path: Path, cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(image C×H×W uint8, hole mask 1×H×W uint8 or None) of one input; TranslationError naming the file."""
    try:
        img = open_image(path)
    except DataError as e:
        raise TranslationError(f"cannot edit {path}: it is not a readable image ({e})") from None
    side, c, task = input_side(cfg), cfg.data.channels, cfg.data.task
    if img.size != (side, side):
        what = "super-resolves" if task == "sr" else "inpaints"
        raise TranslationError(
            f"cannot edit {path}: it is {img.size[0]}×{img.size[1]} px, and this model {what} {side}×{side} px "
            f"images; resize it to {side}×{side} first"
        )
    if c == 1 and is_color(img):
        raise TranslationError(f"cannot edit {path}: it is a colour image and this model edits grayscale")
    array = np.asarray(to_mode(img, "L" if c == 1 else "RGB"), dtype=np.uint8)
    image = array[None] if c == 1 else array.transpose(2, 0, 1)
    if task != "inpaint":
        return np.ascontiguousarray(image), None
    if "A" not in img.getbands() and "transparency" not in img.info:
        raise TranslationError(
            f"cannot inpaint {path}: it has no alpha channel; mark the missing pixels with alpha < {ALPHA_HOLE} "
            "(a PNG with transparency)"
        )
    alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3]
    hole = (alpha < ALPHA_HOLE).astype(np.uint8)[None]
    if not hole.any():
        raise TranslationError(f"cannot inpaint {path}: no pixel has alpha < {ALPHA_HOLE}, so there is no hole to fill")
    if hole.all():
        raise TranslationError(
            f"cannot inpaint {path}: every pixel has alpha < {ALPHA_HOLE}; leave some pixels visible to fill from"
        )
    return mean_fill(image[None], hole[None])[0], hole


def composite(edited: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The generator's pixels inside the hole (mask 1), the input's outside it."""
    hole = masks.bool().expand_as(edited)
    return torch.where(hole, edited, inputs)


@torch.no_grad()
def edit_arrays(
    G: nn.Module, cfg: PipelineConfig, inputs_u8: np.ndarray, masks: np.ndarray | None, batch_size: int = 64
) -> torch.Tensor:
    """Degraded inputs (and hole masks) uint8 → edited images uint8 N×C×R×R (inpainting: composited).
    ``G``: a bare U-Net or an editor (``pix2pix.as_editor``), so a checkpoint's generator and a registered
    version edit through the same program."""
    from .generate import to_uint8_images
    from .pix2pix import as_editor, editor_inputs

    editor = as_editor(G, cfg)

    x = torch.from_numpy(np.array(inputs_u8))  # copies: datasets are read-only memory maps
    m = torch.from_numpy(np.array(masks)) if masks is not None else None
    device = next(editor.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb, mb = x[i : i + batch_size], m[i : i + batch_size] if m is not None else None
        edited = to_uint8_images(editor(editor_inputs(xb, mb, cfg.data.task).to(device)).float().cpu())
        out.append(composite(edited, xb, mb) if mb is not None else edited)
    r = cfg.data.resolution
    return torch.cat(out) if out else torch.empty(0, cfg.data.channels, r, r, dtype=torch.uint8)


def edit_to_dir(G: nn.Module, cfg: PipelineConfig, inputs: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Edit every image ``inputs`` names into ``out_dir/<stem>.png``; returns the files written. Every input
    is read and checked before anything is written; an existing output name is refused (OutputPathError)."""
    from .generate import png_bytes

    if cfg.model.arch != "pix2pix":
        raise TranslationError(f"{cfg.name} is not an image editor; edit with a pix2pix run")
    files = input_files(inputs)
    read = [read_edit_input(f, cfg) for f in files]
    out = Path(out_dir)
    targets = [out / f"{f.stem}.png" for f in files]
    seen: dict[Path, Path] = {}
    for f, t in zip(files, targets):
        if t in seen:
            raise TranslationError(f"{f} and {seen[t]} would both be written to {t}; rename one of them")
        seen[t] = f
        if t.exists():
            raise OutputPathError(f"{t} already exists; edit never replaces files. Fix: choose an empty --out")
    images = np.stack([image for image, _ in read])
    masks = np.stack([mask for _, mask in read]) if cfg.data.task == "inpaint" else None
    edited = edit_arrays(G, cfg, images, masks)
    for t, image in zip(targets, edited):
        atomic_write_bytes(t, png_bytes(image))
    return targets
