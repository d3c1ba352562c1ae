"""Training data: a source (IDX directory, image folder, ``torchvision:NAME``, ``s3://`` prefix)
→ a validated uint8 array N×C×H×W plus ``manifest.json`` (shape, count, sha256, source).

A prepared dataset directory holds ``data.npy``, optionally ``labels.npy`` (int64, N) and
``manifest.json``. It is written atomically: a failed or interrupted prep leaves no partial
directory and leaves a previous one intact. Every bad input raises :class:`DataError`, whose
message names the file, the problem and the fix.

IDX files are read in ``data_idx``, image folders in ``data_images``; their public names are
re-exported here.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ganforge
from ganforge.config import DEFAULT_IDX_DIR, DataConfig
from ganforge.data_idx import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IDX_STEMS,
    MAX_IDX_BYTES,
    find_idx_file,
    has_idx_files,
    idx_shape,
    read_idx,
    read_idx_dir,
)
from ganforge.data_images import (
    GRAY_BANDS,
    IMAGE_EXTENSIONS,
    RawDataset,
    check_channels,
    class_folders,
    fit_batch,
    fit_square,
    is_color,
    list_image_files,
    nchw_from_hwc,
    open_image,
    read_image_folder,
    to_mode,
)
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

__all__ = [
    "ACCEPTED_SOURCES",
    "DOWNLOAD_TIMEOUT_S",
    "GRAY_BANDS",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IDX_STEMS",
    "IMAGE_EXTENSIONS",
    "MAX_IDX_BYTES",
    "PREPARED_FILES",
    "TORCHVISION_DATASETS",
    "DataError",
    "LoadedDataset",
    "RawDataset",
    "build_manifest",
    "check_channels",
    "check_memory",
    "class_folders",
    "find_idx_file",
    "fit_batch",
    "fit_square",
    "has_idx_files",
    "idx_shape",
    "is_color",
    "label_summary",
    "list_image_files",
    "load_array",
    "load_dataset",
    "local_sources",
    "nchw_from_hwc",
    "open_image",
    "prepare",
    "prepared_files",
    "read_idx",
    "read_idx_dir",
    "read_image_folder",
    "read_local_dir",
    "read_s3_prefix",
    "read_source",
    "read_torchvision",
    "sha256_of_array",
    "socket_timeout",
    "to_mode",
    "verify_sha256",
    "write_dataset_files",
]

TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100")
DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout while torchvision downloads, so an offline machine fails in seconds, not minutes."""
ACCEPTED_SOURCES = (
    f"an IDX directory (e.g. {DEFAULT_IDX_DIR}), an image folder (PNG/JPEG, searched recursively), "
    f"torchvision:NAME (NAME one of {', '.join(TORCHVISION_DATASETS)}) or s3://bucket/prefix"
)


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
