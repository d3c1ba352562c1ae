"""What every prepared dataset shares, images (``ganforge.data``) and audio (``ganforge.audio``) alike:
its ``manifest.json``, the array checksum it records, the class histogram, and DataError."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import GanforgeError

MANIFEST_NAME = "manifest.json"


class DataError(GanforgeError, ValueError):
    """Bad input data or a bad dataset directory; the message names the file, the problem and the fix."""


def sha256_of_array(a: np.ndarray) -> str:
    """Hex sha256 of the array's C-contiguous bytes (what ``manifest.json`` records)."""
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def class_histogram(labels: np.ndarray | None) -> dict[str, int] | None:
    """``{"0": count, ...}`` over the labels present (JSON keys are strings), or None without labels."""
    if labels is None:
        return None
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def save_array(path: Path, a: np.ndarray) -> None:
    """``np.save`` (format 1.0, C order) through ordinary file writes.

    numpy writes an array's body with ``ndarray.tofile``, which reports a full disk as an OSError
    without an errno ("N requested and M written"); a plain write raises ENOSPC, which the atomic
    writers (``fileio.atomic_dir``) turn into a one-line error naming the output and the fix.
    """
    a = np.ascontiguousarray(a)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
        f.write(memoryview(a.reshape(-1).view(np.uint8)))


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
