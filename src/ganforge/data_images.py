"""Image folders and image arrays: reading PNG/JPEG files, fitting them to the target square
shape and channels, and ``RawDataset``, the examples every reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganforge.config import DataConfig
from ganforge.manifest import DataError, check_memory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GRAY_BANDS = ({"L"}, {"1"}, {"I"}, {"F"})
"""Band sets (alpha aside) of single-channel PIL modes: L, LA, 1, I, I;16, F."""


@dataclass(frozen=True)
class RawDataset:
    """Examples at their target shape, before they are written: N×C×H×W uint8, optional labels."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None


def nchw_from_hwc(a: np.ndarray) -> np.ndarray:
    """N×H×W (gray) or N×H×W×C → N×C×H×W uint8."""
    if a.ndim == 3:
        return np.ascontiguousarray(a[:, None], dtype=np.uint8)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.uint8)


def fit_batch(images: np.ndarray, cfg: DataConfig, shown_as: str) -> np.ndarray:
    """N×C×H×W uint8 → N×cfg.channels×R×R: bilinear resize (PIL) and gray→RGB by repetition."""
    from PIL import Image

    n, c, h, w = images.shape
    if c == 3 and cfg.channels == 1:
        raise DataError(f"{shown_as} has RGB images but data.channels=1; set data.channels=3")
    r = cfg.resolution
    # Filled one image at a time, so a full 64×64 RGB prep holds one copy of the data, not three.
    out = np.empty((n, cfg.channels, r, r), np.uint8)
    if (h, w) == (r, r):
        out[:] = images  # a single gray channel broadcasts over three
        return out
    for i, image in enumerate(images):
        pil = Image.fromarray(np.ascontiguousarray(image[0] if c == 1 else image.transpose(1, 2, 0)))
        out[i] = nchw_from_hwc(np.asarray(fit_square(pil, r))[None])[0]
    return out


def fit_square(img, resolution: int):
    """Resize the shorter side to ``resolution`` (bilinear), then center-crop to a square."""
    from PIL import Image

    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def list_image_files(folder: Path) -> list[Path]:
    """PNG/JPEG files under ``folder`` (recursive, hidden entries skipped), sorted for determinism."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def open_image(path: Path):
    """Decode the whole image (so corruption shows here), applying the EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:  # checked before decoding a byte
                raise DataError(
                    f"cannot read image {path}: it is {w}×{h} = {w * h} pixels, more than the "
                    f"{Image.MAX_IMAGE_PIXELS} ganforge decodes (a decompression bomb, or far larger than "
                    "any training image); shrink it or remove it from the folder"
                )
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e}; shrink it or remove it from the folder") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; delete or replace the file") from e


def is_color(img) -> bool:
    """True for images with colour bands; palette images count as colour unless the palette is gray."""
    if img.mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    return (set(img.getbands()) - {"A"}) not in GRAY_BANDS


def to_mode(img, mode: str):
    """Convert to "L" or "RGB"; 16-bit gray is rescaled, because PIL's convert clips it to 255."""
    from PIL import Image

    if img.mode == "I" or img.mode.startswith("I;16"):
        gray16 = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(gray16 / 257.0), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


def check_channels(first_color: Path | None, first_gray: Path | None, channels: int, folder: Path) -> None:
    """Colour into channels=1 is an error; a mix of gray and colour into channels=3 is an error."""
    if first_color and channels == 1:
        raise DataError(f"{folder} has RGB images (e.g. {first_color}) but data.channels=1; set data.channels=3")
    if first_color and first_gray:
        raise DataError(
            f"{folder} mixes channel counts: grayscale images (e.g. {first_gray}) and RGB images "
            f"(e.g. {first_color}); convert them all to RGB (or all to grayscale with data.channels=1)"
        )


def class_folders(folder: Path, files: list[Path]) -> list[str] | None:
    """Sorted names of top-level subfolders holding images, when there are at least two; else None."""
    tops = sorted({f.relative_to(folder).parts[0] for f in files if len(f.relative_to(folder).parts) > 1})
    if len(tops) < 2:
        return None
    loose = [f for f in files if len(f.relative_to(folder).parts) == 1]
    if loose:
        raise DataError(
            f"{folder} has class subfolders ({', '.join(tops[:5])}) but also images at its top level "
            f"(e.g. {loose[0]}); move those into a class subfolder or remove them"
        )
    return tops


def read_image_folder(folder: Path, files: list[Path], cfg: DataConfig) -> RawDataset:
    """Images of a folder at target shape; labels from class subfolders when there are ≥2."""
    classes = class_folders(folder, files)
    files = files[: cfg.limit]
    per_example = 2 * cfg.channels * cfg.resolution**2  # each image as fitted, then in np.stack's array
    check_memory(len(files) * per_example, per_example, f"reading {len(files)} images of {folder}")
    first_color = first_gray = None
    fitted = []
    for path in files:
        img = open_image(path)
        if is_color(img):
            first_color = first_color or path
        else:
            first_gray = first_gray or path
        check_channels(first_color, first_gray, cfg.channels, folder)
        fitted.append(np.asarray(fit_square(to_mode(img, "L" if cfg.channels == 1 else "RGB"), cfg.resolution)))
    images = nchw_from_hwc(np.stack(fitted))
    labels = None
    if classes:
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[f.relative_to(folder).parts[0]] for f in files], dtype=np.int64)
    return RawDataset(images, labels, classes)
