"""Training data: a source (IDX directory, image folder, ``torchvision:NAME``, ``s3://`` prefix)
→ a validated uint8 array N×C×H×W plus ``manifest.json`` (shape, count, sha256, source).

A prepared dataset directory holds ``data.npy``, optionally ``labels.npy`` (int64, N) and
``manifest.json``. It is written atomically: a failed or interrupted prep leaves no partial
directory and leaves a previous one intact. Every bad input raises :class:`DataError`, whose
message names the file, the problem and the fix.
"""

from __future__ import annotations

import datetime
import gzip
import json
import math
import os
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ganforge
from ganforge.config import DEFAULT_IDX_DIR, DataConfig
from ganforge.fileio import StorageError, atomic_dir, check_output_dir, fetch_s3_prefix
from ganforge.manifest import (
    DataError,
    check_memory,
    class_histogram,
    save_array,
    sha256_of_array,
    write_manifest,
)
from ganforge.paths import cache_dir

IDX_IMAGES_MAGIC = 0x00000803
"""IDX header: unsigned bytes, 3 dimensions (count, rows, cols)."""
IDX_LABELS_MAGIC = 0x00000801
"""IDX header: unsigned bytes, 1 dimension (count)."""
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GRAY_BANDS = ({"L"}, {"1"}, {"I"}, {"F"})
"""Band sets (alpha aside) of single-channel PIL modes: L, LA, 1, I, I;16, F."""
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100")
DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout while torchvision downloads, so an offline machine fails in seconds, not minutes."""
ACCEPTED_SOURCES = (
    f"an IDX directory (e.g. {DEFAULT_IDX_DIR}), an image folder (PNG/JPEG, searched recursively), "
    f"torchvision:NAME (NAME one of {', '.join(TORCHVISION_DATASETS)}) or s3://bucket/prefix"
)


@dataclass(frozen=True)
class RawDataset:
    """Examples at their target shape, before they are written: N×C×H×W uint8, optional labels."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None


@dataclass(frozen=True)
class LoadedDataset:
    """A prepared dataset directory: images memory-mapped, labels (or None), its manifest."""

    images: np.ndarray
    labels: np.ndarray | None
    manifest: dict
    path: Path


def prepare(cfg: DataConfig, out_dir: str | os.PathLike, split: str | None = None) -> dict:
    """Prepare ``cfg.source`` into the dataset directory ``out_dir`` and return its manifest.

    ``split`` ("train" or "test") defaults to ``cfg.split``; image folders without ``train/`` and
    ``test/`` subfolders have no splits and record ``"all"``. ``cfg.limit`` keeps the first N examples.
    """
    split = split or cfg.split
    if split not in IDX_STEMS:
        raise DataError(f"split={split!r} is not valid; choose 'train' or 'test'")
    check_output_dir(
        out_dir,
        command="ganforge prep",
        manifest="manifest.json",
        owned_files=prepared_files,
        protect=local_sources(cfg.source),
    )
    if cfg.kind == "audio":
        from ganforge.audio import prepare_audio  # audio deps load only for audio runs

        return prepare_audio(cfg, out_dir, split)
    raw, recorded_split = read_source(cfg, split)
    manifest = build_manifest(cfg.source, recorded_split, raw)
    with atomic_dir(out_dir) as tmp:
        write_dataset_files(tmp, raw, manifest)
    return manifest


PREPARED_FILES = ("data.npy", "labels.npy", "manifest.json")
"""Everything ``prepare`` writes into a dataset directory (image and audio)."""


def prepared_files(manifest: dict) -> tuple[str, ...]:
    """The files of an earlier prepared dataset, given its manifest; KeyError if it is not one of ours."""
    if "sha256" not in manifest or "count" not in manifest:
        raise KeyError("not a manifest written by ganforge prep")
    return PREPARED_FILES


def local_sources(source: str) -> list[Path]:
    """The local folder a source names (to protect it from ``--out``), or none for s3://, torchvision:, espeak:."""
    source = str(source)
    if source.startswith("file://"):
        source = source[len("file://") :]
    return [] if ":" in source.split("/", 1)[0] else [Path(source)]


def read_source(cfg: DataConfig, split: str) -> tuple[RawDataset, str]:
    """Read any accepted source to target shape; also return the split actually recorded."""
    source = str(cfg.source)
    if source.startswith("torchvision:"):
        return read_torchvision(source.partition(":")[2], cfg, split), split
    if source.startswith("s3://"):
        return read_s3_prefix(source, cfg, split)
    path = Path(source[len("file://") :] if source.startswith("file://") else source)
    if not path.is_dir():
        problem = "is a file, not a directory" if path.exists() else "does not exist"
        default_missing = source == DEFAULT_IDX_DIR
        hint = "; install it with `apt-get install dataset-fashion-mnist`" if default_missing else ""
        raise DataError(f"data source {source!r} {problem}{hint}. Accepted sources: {ACCEPTED_SOURCES}")
    return read_local_dir(path, cfg, split, shown_as=source)


def read_s3_prefix(source: str, cfg: DataConfig, split: str) -> tuple[RawDataset, str]:
    """Download a completed prefix into a temporary directory, then read it like a local one."""
    with tempfile.TemporaryDirectory(prefix="ganforge-s3-") as local:
        try:
            fetch_s3_prefix(source, local)
        except StorageError as e:
            raise DataError(f"could not fetch data source {source}: {e}") from e
        try:
            return read_local_dir(Path(local), cfg, split, shown_as=source)
        except DataError as e:
            # Name the object the user can find, not the temporary copy.
            raise DataError(str(e).replace(local, source.rstrip("/"))) from e


def read_local_dir(path: Path, cfg: DataConfig, split: str, shown_as: str) -> tuple[RawDataset, str]:
    """Detect an IDX directory or an image folder by its content and read it.

    An image folder with a ``train/`` or ``test/`` subfolder reads the one of the split;
    otherwise the whole folder is read and the split is recorded as "all".
    """
    if has_idx_files(path):
        return read_idx_dir(path, split, cfg), split
    split_dir = path / split
    split_files = list_image_files(split_dir) if split_dir.is_dir() else []
    if split_files:
        return read_image_folder(split_dir, split_files, cfg), split
    files = list_image_files(path)
    if not files:
        looked_for = ", ".join(f"{s}[.gz]" for stems in IDX_STEMS.values() for s in stems)
        raise DataError(
            f"no images found in {shown_as}: looked for {', '.join('*' + e for e in IMAGE_EXTENSIONS)} "
            f"(recursively) and for IDX files ({looked_for}). Point data.source at a folder of images "
            "or an IDX directory (`apt-get install dataset-fashion-mnist` provides one)"
        )
    return read_image_folder(path, files, cfg), "all"


def has_idx_files(path: Path) -> bool:
    """True when the directory holds any file named like an IDX file of either split."""
    names = {p.name for p in path.iterdir() if p.is_file()}
    return any(s in names or f"{s}.gz" in names for stems in IDX_STEMS.values() for s in stems)


def find_idx_file(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in ``directory``; DataError naming both when neither exists."""
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"IDX file missing in {directory}: looked for {stem} and {stem}.gz. Put both the images and the "
        "labels file of the split there (Fashion-MNIST: `apt-get install dataset-fashion-mnist` installs "
        f"them in {DEFAULT_IDX_DIR})"
    )


MAX_IDX_BYTES = 1 << 36
"""Largest IDX body a header may promise (64 GiB); beyond that the header is corrupt, not the dataset big."""
_READ_CHUNK = 1 << 24


def _corrupt_gzip(path: Path, e: BaseException) -> DataError:
    return DataError(f"{path} is a corrupt gzip file ({e}); download it again or gunzip it by hand to check")


def _idx_header(f, path: Path, expected_magic: int) -> tuple[int, ...]:
    """The dimensions an IDX header promises, after checking its magic and that its size is plausible."""
    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
    header = f.read(header_len)
    if len(header) < header_len:
        raise DataError(
            f"{path} is truncated: {len(header)} bytes, shorter than the {header_len}-byte IDX "
            "header; download the file again"
        )
    magic = int.from_bytes(header[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x} ({kind}); "
            "is it the right file, or an undecompressed/renamed one?"
        )
    dims = tuple(int.from_bytes(header[i : i + 4], "big") for i in range(4, header_len, 4))
    promised = math.prod(dims)
    shown = "×".join(map(str, dims))
    if promised == 0:
        raise DataError(
            f"{path}: its IDX header promises {shown} = no data; the file is corrupt or empty: download it again"
        )
    if promised > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: its IDX header promises {shown} = {promised} bytes, more than the "
            f"{MAX_IDX_BYTES >> 30} GiB ganforge reads; the header is corrupt: download the file again"
        )
    return dims


@contextmanager
def _open_idx(path: Path) -> Iterator:
    """An IDX file opened for reading (gunzipped when the name ends in .gz); every failure a DataError."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            yield f
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt_gzip(path, e) from e
    except OSError as e:
        if path.suffix == ".gz" and not isinstance(e, (FileNotFoundError, PermissionError)):
            raise _corrupt_gzip(path, e) from e
        raise DataError(f"cannot read {path} ({e.strerror or e}); check that it exists and is readable") from e


def idx_shape(path: Path, expected_magic: int) -> tuple[int, ...]:
    """The shape an IDX file's header promises (count first), reading only the header."""
    with _open_idx(path) as f:
        return _idx_header(f, path, expected_magic)


def _gzip_recorded_size(path: Path) -> int | None:
    """The uncompressed size mod 2³² a gzip file's trailer records (of its last member), or None."""
    with open(path, "rb") as raw:
        raw.seek(0, os.SEEK_END)
        if raw.tell() < 18:  # a 10-byte header and the 8-byte trailer
            return None
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), "little")


def _rest_matches_header(f, path: Path, header_len: int, promised: int) -> bool:
    """Without unpacking it, whether the file's size agrees with the ``promised`` body bytes.

    An uncompressed file's size is known; a gzip file's trailer records its unpacked size
    (mod 2³²). When they agree, the part after the records read is not decompressed.
    """
    if path.suffix != ".gz":
        return os.fstat(f.fileno()).st_size == header_len + promised
    return _gzip_recorded_size(path) == (header_len + promised) % (1 << 32)


def read_idx(path: Path, expected_magic: int, limit: int | None = None) -> np.ndarray:
    """The first ``limit`` records (all when None) of an IDX file, gzipped when the name ends in .gz, as uint8.

    The header (magic, then one big-endian uint32 per dimension, count first) says how many
    bytes follow; only the records kept are allocated and decompressed. The rest of the file
    must agree with the header: an uncompressed file's size, or a gzip file's recorded size,
    must match it, else the rest is streamed through (never held) and a file shorter than its
    header promises is truncated, a single byte more is corrupt — so a small .gz that unpacks
    to gigabytes is never unpacked whole. Sizes are multiplied as Python integers (no
    wrap-around). Every problem is a DataError naming the file.
    """
    header_len = 4 + 4 * (expected_magic & 0xFF)
    with _open_idx(path) as f:
        dims = _idx_header(f, path, expected_magic)
        promised, shown = math.prod(dims), "×".join(map(str, dims))
        kept = dims[0] if limit is None else min(dims[0], limit)
        wanted = kept * math.prod(dims[1:])
        out = np.empty(wanted, np.uint8)
        view, got = memoryview(out), 0
        while got < wanted:
            n = f.readinto(view[got : got + _READ_CHUNK])
            if not n:
                break
            got += n
        if got == wanted < promised and _rest_matches_header(f, path, header_len, promised):
            return out.reshape((kept, *dims[1:]))
        scratch = memoryview(bytearray(min(_READ_CHUNK, promised - got)))  # the rest passes through here
        while got < promised:
            n = f.readinto(scratch[: min(len(scratch), promised - got)])
            if not n:
                break
            got += n
        if got < promised:
            raise DataError(
                f"{path} is truncated: header promises {shown} = {promised} bytes of data but only "
                f"{got} follow; download the file again"
            )
        if f.read(1):
            raise DataError(
                f"{path} has more bytes after the {promised} its header ({shown}) promises; the "
                "file is corrupt: download it again"
            )
    return out.reshape((kept, *dims[1:]))


def read_idx_dir(directory: Path, split: str, cfg: DataConfig) -> RawDataset:
    """Images and labels of one split of an IDX directory, first ``cfg.limit``, at target shape.

    Only the examples kept are decompressed, and only after :func:`check_memory` has agreed to
    their size (as read and as prepared).
    """
    images_stem, labels_stem = IDX_STEMS[split]
    images_path = find_idx_file(directory, images_stem)
    labels_path = find_idx_file(directory, labels_stem)
    image_shape, labels_shape = idx_shape(images_path, IDX_IMAGES_MAGIC), idx_shape(labels_path, IDX_LABELS_MAGIC)
    count = image_shape[0]
    if count != labels_shape[0]:
        raise DataError(
            f"{images_path} holds {count} images but {labels_path} holds {labels_shape[0]} labels; "
            f"the two files must come from the same dataset release. Fix: replace {labels_path.name} "
            f"with the labels file released with {images_path.name} (Fashion-MNIST: "
            "`apt-get install --reinstall dataset-fashion-mnist`)"
        )
    kept = count if cfg.limit is None else min(count, cfg.limit)
    # per example: the image as read, as prepared (fit_batch's copy) and its label (uint8 and int64)
    per_example = math.prod(image_shape[1:]) + cfg.channels * cfg.resolution**2 + 9
    check_memory(kept * per_example, per_example, f"reading {kept} of the {count} images of {images_path}")
    images = read_idx(images_path, IDX_IMAGES_MAGIC, kept)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, kept)
    from ganforge.labels import check_labels, idx_class_names

    class_names = idx_class_names(directory)
    check_labels(labels, class_names, labels_path)
    return RawDataset(fit_batch(images[:, None], cfg, shown_as=str(images_path)), labels.astype(np.int64), class_names)


def read_torchvision(name: str, cfg: DataConfig, split: str) -> RawDataset:
    """A torchvision dataset, downloaded into the cache dir (``GANFORGE_CACHE``) when not there yet."""
    if name not in TORCHVISION_DATASETS:
        raise DataError(
            f"torchvision:{name} is not supported; use one of "
            f"{', '.join('torchvision:' + n for n in TORCHVISION_DATASETS)}"
        )
    import torchvision  # heavy; only this source needs it

    root = cache_dir() / "torchvision"
    try:
        with socket_timeout(DOWNLOAD_TIMEOUT_S):
            dataset = getattr(torchvision.datasets, name)(root=str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"could not download torchvision:{name} into {root} "
            f"({type(e).__name__}: {' '.join(str(e).split())}); "
            f"this machine looks offline. Use the local IDX directory instead: data.source={DEFAULT_IDX_DIR} "
            f"(`apt-get install dataset-fashion-mnist`), or put the files torchvision expects under {root} "
            "(the cache dir is $GANFORGE_CACHE, default ~/.cache/ganforge)"
        ) from e
    images = nchw_from_hwc(np.asarray(dataset.data))
    labels = np.asarray(dataset.targets, dtype=np.int64)
    images, labels = images[: cfg.limit], labels[: cfg.limit]
    return RawDataset(fit_batch(images, cfg, shown_as=f"torchvision:{name}"), labels, list(dataset.classes))


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Set the default socket timeout for a block (torchvision's downloader takes no timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


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


def label_summary(labels: np.ndarray | None, class_names: list[str] | None) -> dict:
    """Manifest entries of a labelled dataset: ``num_classes``, ``class_counts`` (per class name, every
    named class listed) and ``labels_sha256``; nothing for an unlabelled one."""
    if labels is None:
        return {}
    from ganforge.labels import class_counts

    num_classes = len(class_names) if class_names else int(labels.max()) + 1 if labels.size else 0
    return {
        "num_classes": num_classes,
        "class_counts": class_counts(labels, class_names),
        "labels_sha256": sha256_of_array(np.asarray(labels, dtype=np.int64)),
    }


def build_manifest(source: str, split: str, raw: RawDataset) -> dict:
    """The manifest that describes (and checksums) a prepared image dataset."""
    return {
        "source": str(source),
        "kind": "image",
        "split": split,
        "count": int(raw.images.shape[0]),
        "shape": list(raw.images.shape),
        "dtype": str(raw.images.dtype),
        "sha256": sha256_of_array(raw.images),
        "class_histogram": class_histogram(raw.labels),
        "class_names": raw.class_names,
        **label_summary(raw.labels, raw.class_names),
        "ganforge_version": ganforge.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_dataset_files(directory: Path, raw: RawDataset, manifest: dict) -> None:
    """Write data.npy, labels.npy (when labelled) and manifest.json into a (temporary) directory."""
    save_array(directory / "data.npy", raw.images)
    if raw.labels is not None:
        save_array(directory / "labels.npy", raw.labels)
    write_manifest(directory, manifest)


def load_dataset(path: str | os.PathLike) -> LoadedDataset:
    """Open a prepared dataset: checks the manifest and that data.npy's shape and dtype match it."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"not a ganforge dataset: manifest.json missing in {root}; create it with `ganforge prep`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{manifest_path} is not valid JSON ({e}); re-create the dataset with `ganforge prep`") from e
    missing = [k for k in ("shape", "dtype", "count", "sha256") if k not in manifest]
    if missing:
        raise DataError(f"{manifest_path} lacks {', '.join(missing)}; re-create the dataset with `ganforge prep`")
    images = load_array(root / "data.npy")
    if list(images.shape) != list(manifest["shape"]) or str(images.dtype) != manifest["dtype"]:
        raise DataError(
            f"{root / 'data.npy'} is {images.dtype} {list(images.shape)} but {manifest_path} says "
            f"{manifest['dtype']} {manifest['shape']}; the dataset was changed after prep: "
            "re-create it with `ganforge prep`"
        )
    labels = None
    if (root / "labels.npy").exists():
        labels = load_array(root / "labels.npy")
        if labels.shape != (images.shape[0],) or labels.dtype != np.int64:
            raise DataError(
                f"{root / 'labels.npy'} is {labels.dtype} {list(labels.shape)}, expected int64 "
                f"[{images.shape[0]}]; re-create the dataset with `ganforge prep`"
            )
    return LoadedDataset(images=images, labels=labels, manifest=manifest, path=root)


def load_array(path: Path) -> np.ndarray:
    """np.load memory-mapped, with a DataError naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path} is missing; re-create the dataset with `ganforge prep`")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e}); re-create the dataset with `ganforge prep`") from e


def verify_sha256(ds: LoadedDataset) -> str:
    """Full check (reads every byte): the images' sha256 equals the manifest's. Returns the digest."""
    digest = sha256_of_array(ds.images)
    if digest != ds.manifest["sha256"]:
        raise DataError(
            f"{ds.path / 'data.npy'} has sha256 {digest} but its manifest says "
            f"{ds.manifest['sha256']}; the data changed after prep: re-create it with `ganforge prep`"
        )
    return digest
