"""A small image classifier trained on the real training split, to measure whether a
class-conditional generator draws the class it was asked for (and to state the ceiling: the
same classifier's accuracy on the real test split).

Trained once per dataset version and cached, like the real FID features: the cache file is
keyed by the sha256 of the training images and of their labels plus the recipe name, so a
new dataset version (or a changed recipe, which must change ``RECIPE``) trains a new one.
Training is deterministic (seeded shuffles, seeded init). Imports only torch, numpy, stdlib.

Recipe (``RECIPE``): two 3×3 convolutions (16, 32 channels) with ReLU and 2×2 max-pooling,
average-pooled to 7×7, a 64-unit hidden layer, dropout 0.25; Adam(1e-3), batch 128, 2 epochs,
inputs in [-1, 1] as the generator's. Small on purpose (~1 M multiply-adds per 28 px image): it
trains on the 60k Fashion-MNIST images in minutes on one CPU core. Its own test accuracy is
reported with every score as the ceiling (published Fashion-MNIST: HOG+SVM 92.6 %, WRN-28-10
~96 %); it is a yardstick, not a state of the art.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RECIPE = "cnn16-32-h64-e2-v1"
EPOCHS = 2
BATCH_SIZE = 128
LR = 1e-3
SEED = 0


class SmallClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 49, 64), nn.ReLU(inplace=True), nn.Dropout(0.25), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_float(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images_u8, dtype=np.uint8)).float().div_(127.5).sub_(1.0)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def cache_path(cache_dir: str | os.PathLike, images_sha256: str, labels_sha256: str) -> Path:
    return Path(cache_dir) / "classifiers" / f"{images_sha256[:16]}-{labels_sha256[:16]}-{RECIPE}.pt"


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int = EPOCHS) -> SmallClassifier:
    """Train the recipe on uint8 N×C×H×W images and int64 labels (deterministic for a given input)."""
    torch.manual_seed(SEED)
    net = SmallClassifier(images.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    y_all = torch.from_numpy(np.array(labels, dtype=np.int64))
    g = torch.Generator().manual_seed(SEED)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=g).numpy()
        for i in range(0, len(perm), BATCH_SIZE):
            idx = np.sort(perm[i : i + BATCH_SIZE])
            x, y = _to_float(images[idx]), y_all[idx]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


def load_or_train(
    train_dir: str | os.PathLike, num_classes: int, cache_dir: str | os.PathLike
) -> tuple[SmallClassifier, dict]:
    """The classifier of a prepared (labelled) training dataset: from the cache, or trained and cached.

    Returns (classifier in eval mode, info: cached, path, seconds, recipe, train count)."""
    from .data import DataError, load_dataset

    ds = load_dataset(train_dir)
    if ds.labels is None:
        raise DataError(
            f"{train_dir} has no labels.npy: the class-accuracy classifier needs the labelled training "
            "split (prepare an IDX directory with its labels file, or a folder with class subfolders)"
        )
    images_sha, labels_sha = ds.manifest["sha256"], _digest(np.asarray(ds.labels))
    path = cache_path(cache_dir, images_sha, labels_sha)
    info = {"classifier_recipe": RECIPE, "classifier_train_count": int(len(ds.labels)), "classifier_path": str(path)}
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("num_classes") == num_classes and saved.get("channels") == ds.images.shape[1]:
            net = SmallClassifier(saved["channels"], num_classes)
            net.load_state_dict(saved["state"])
            return net.eval(), {**info, "classifier_cached": True, "classifier_train_seconds": saved["seconds"]}
    started = time.perf_counter()
    net = train_classifier(np.asarray(ds.images), np.asarray(ds.labels), num_classes)
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    torch.save(
        {
            "state": net.state_dict(),
            "num_classes": num_classes,
            "channels": int(ds.images.shape[1]),
            "recipe": RECIPE,
            "images_sha256": images_sha,
            "labels_sha256": labels_sha,
            "seconds": seconds,
        },
        buffer,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # concurrent evaluations write the same bytes; the rename is atomic
    return net, {**info, "classifier_cached": False, "classifier_train_seconds": seconds}


@torch.no_grad()
def predict(net: SmallClassifier, images_u8: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Predicted class ids of uint8 N×C×H×W images."""
    return (
        np.concatenate(
            [
                net(_to_float(images_u8[i : i + batch_size])).argmax(1).numpy()
                for i in range(0, len(images_u8), batch_size)
            ]
        )
        if len(images_u8)
        else np.empty(0, np.int64)
    )


def accuracy(net: SmallClassifier, images_u8: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(net, images_u8) == np.asarray(labels)).mean())


def per_class_accuracy(
    net: SmallClassifier, images_u8: np.ndarray, labels: np.ndarray, num_classes: int
) -> list[float | None]:
    hits = predict(net, images_u8) == np.asarray(labels)
    return [float(hits[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]
