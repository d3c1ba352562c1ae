"""What every prepared dataset shares, images (``ganforge.data``) and audio (``ganforge.audio``) alike:
its ``manifest.json``, the array checksum it records, the class histogram, DataError, how its arrays
are saved, and the memory budget that bounds reading them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import GanforgeError

MANIFEST_NAME = "manifest.json"
MEMORY_ENV = "GANFORGE_DATA_MEMORY_MIB"
"""Overrides the memory budget of one prep (MiB); the default is half of the machine's (or container's) memory."""


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


def _memory_limit_bytes() -> int | None:
    """This process's memory: the physical memory, or its cgroup's limit (a container's) when lower."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(ValueError, OSError):
            limits.append(int(Path(name).read_text().strip()))  # "max" (no limit) is a ValueError
    return min(limits) if limits else None


def memory_budget() -> tuple[int | None, str]:
    """Bytes one prep may hold in arrays (None: unknown, unbounded) and where that number comes from."""
    raw = os.environ.get(MEMORY_ENV, "")
    if raw:
        try:
            mib = int(raw)
        except ValueError:
            mib = 0
        if mib <= 0:
            raise DataError(f"{MEMORY_ENV}={raw!r} must be a positive whole number of MiB")
        return mib << 20, f"{MEMORY_ENV}={mib}"
    limit = _memory_limit_bytes()
    if limit is None:
        return None, "unknown"
    source = f"half of the {limit / 2**30:.1f} GiB of memory of this machine or container; {MEMORY_ENV} overrides it"
    return limit // 2, source


def check_memory(needed: int, per_example: int, what: str) -> None:
    """Refuse, before allocating anything, a read whose arrays would exceed :func:`memory_budget`.

    ``needed`` bytes for ``what``; ``per_example`` bytes per kept example, to suggest a data.limit that fits.
    """
    budget, source = memory_budget()
    if budget is None or needed <= budget:
        return
    fits = max(1, budget // max(1, per_example))
    raise DataError(
        f"{what} needs {needed / 2**20:,.1f} MiB of memory, more than the {budget / 2**20:,.1f} MiB budget "
        f"({source}). Fix: keep fewer examples, e.g. --set data.limit={fits}, or raise {MEMORY_ENV}"
    )
