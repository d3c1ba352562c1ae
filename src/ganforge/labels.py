"""Class labels: names for a dataset's classes, validation of labels against them, and the
lookup ``ganforge generate --class`` uses (a name or an id).

Imports only numpy and the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import GanforgeError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's label names, in label order (Xiao et al. 2017; torchvision's FashionMNIST.classes)."""
MNIST_CLASSES = tuple(str(d) for d in range(10))
CLASS_NAMES_FILE = "classes.txt"
"""An IDX directory may name its classes in this file, one per line in label order."""


class LabelError(GanforgeError, ValueError):
    """Bad labels or an unknown class; the message names the file or the choices, and the fix."""


def idx_class_names(directory: Path) -> list[str] | None:
    """Class names for an IDX directory: its ``classes.txt`` when present, Fashion-MNIST's names for a
    directory named like it (Debian's ``/usr/share/datasets/fashion-mnist``), the digits for MNIST,
    else None (classes are then known by their ids)."""
    names_file = directory / CLASS_NAMES_FILE
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(set(names)) != len(names) or not names:
            raise LabelError(
                f"{names_file} must list distinct class names, one per line in label order; it holds {names}"
            )
        return names
    name = directory.resolve().name.lower().replace("_", "-")
    if "fashion" in name:
        return list(FASHION_MNIST_CLASSES)
    if "mnist" in name:
        return list(MNIST_CLASSES)
    return None


def check_labels(labels: np.ndarray, class_names: Sequence[str] | None, path: Path | str) -> None:
    """Labels are non-negative integers below the number of named classes (when names are known)."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise LabelError(
            f"{path} holds a negative label ({low}); labels are class ids 0..K-1: use the labels "
            "file of the same dataset release as the images"
        )
    if class_names is not None and high >= len(class_names):
        raise LabelError(
            f"{path} holds label {high} but only {len(class_names)} classes are named "
            f"({', '.join(class_names)}); use the labels file of the same release, or list every "
            f"class in {CLASS_NAMES_FILE} next to it"
        )


def class_counts(labels: np.ndarray | None, class_names: Sequence[str] | None) -> dict[str, int] | None:
    """``{name: count}`` for every named class (0 for an absent one), or None without labels or names."""
    if labels is None or class_names is None:
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {name: int(counts[i]) for i, name in enumerate(class_names)}


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def class_id(choice: str | int, class_names: Sequence[str] | None, num_classes: int) -> int:
    """The class id of ``choice``: an id (``7``) or a name (``sneaker``, ``Ankle boot``, ``ankle-boot``;
    case, spaces and punctuation ignored). An unknown class is a LabelError listing the choices."""
    text = str(choice).strip()
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    wanted = _normalise(text)
    matches = [i for i, name in enumerate(names) if _normalise(name) == wanted and wanted]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(f"{i} {name}" if name != str(i) else name for i, name in enumerate(names))
    raise LabelError(f"unknown class {text!r}; choose one of: {listed} (a name or its id)")


def class_names_or_ids(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The names of ``num_classes`` classes, their ids as text when the dataset named none."""
    if class_names and len(class_names) == num_classes:
        return list(class_names)
    return [str(i) for i in range(num_classes)]


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """Labels 0, 1, …, K-1, 0, 1, …: ``n`` labels as balanced as n allows (exactly when K divides n), and
    the first m of them are the labels of m, as with the evaluation's latents."""
    return np.arange(n, dtype=np.int64) % num_classes
