"""IDX files (MNIST, Fashion-MNIST): headers checked against the file's size, records read
(gunzipped when the name ends in .gz) only as far as needed, one split read to target shape."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ganforge.config import DEFAULT_IDX_DIR, DataConfig
from ganforge.data_images import RawDataset, fit_batch
from ganforge.manifest import DataError, check_memory

IDX_IMAGES_MAGIC = 0x00000803
"""IDX header: unsigned bytes, 3 dimensions (count, rows, cols)."""
IDX_LABELS_MAGIC = 0x00000801
"""IDX header: unsigned bytes, 1 dimension (count)."""
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
