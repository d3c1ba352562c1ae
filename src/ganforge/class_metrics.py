"""Per-class scores of a class-conditional generator.

The evaluation draws class-balanced samples (``labels.balanced_labels``: class i % K for sample i)
and scores them three ways:

- FID of all of them against the reference split (``metrics.evaluate_images``, as every preset);
- per-class FID: the generated images of class c against the reference images of class c, from
  the same Inception features (no extra extraction). At the quality profile that is FID-1k:
  10,000 balanced samples give 1,000 per class, and the Fashion-MNIST test split has exactly 1,000
  images per class, so the sample size is the largest the test split allows per class. FID-1k is
  strongly biased upwards against FID-10k (real vs real: 2.53 at 10k, 12.50 at 2k, FACTS.md):
  compare per-class numbers with each other, never with the overall FID;
- class accuracy: a small classifier trained on the real training split (``ganforge.classifier``,
  cached per dataset version) labels the generated images; its accuracy on the real reference
  split is reported beside it as the ceiling.

Imports only numpy, torch (through ganforge.classifier) and the core.
"""

from __future__ import annotations

import os

import numpy as np

from .labels import class_names_or_ids


def per_class_fid(
    fake_features: np.ndarray,
    fake_labels: np.ndarray,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    num_classes: int,
) -> list[float | None]:
    """FID of each class's generated features against its real ones; None where a side has < 2."""
    from .metrics import features_to_fid

    out: list[float | None] = []
    for c in range(num_classes):
        f, r = fake_features[fake_labels == c], real_features[real_labels == c]
        out.append(features_to_fid(f, r) if len(f) >= 2 and len(r) >= 2 else None)
    return out


def class_scores(
    fake_u8: np.ndarray,
    fake_labels: np.ndarray,
    fake_features: np.ndarray,
    real_features: np.ndarray,
    reference_dir: str | os.PathLike,
    num_classes: int,
    cache_dir: str | os.PathLike,
    train_dir: str | os.PathLike | None = None,
) -> dict:
    """Per-class FID and (with ``train_dir``) class accuracy with its ceiling; see the module docstring.

    ``real_features`` are the reference features ``metrics.real_features`` returned for this
    evaluation: the images at ``select_real_indices(count, len(real_features))``.
    """
    from .data import DataError, load_dataset
    from .metrics import select_real_indices

    reference = load_dataset(reference_dir)
    if reference.labels is None:
        raise DataError(
            f"{reference_dir} has no labels.npy: per-class FID needs the labelled reference split "
            "(prepare it from an IDX directory with its labels file, or class subfolders)"
        )
    names = class_names_or_ids(reference.manifest.get("class_names"), num_classes)
    indices = select_real_indices(len(reference.images), len(real_features))
    real_labels = np.asarray(reference.labels)[indices]
    fids = per_class_fid(fake_features, fake_labels, real_features, real_labels, num_classes)
    scored = [f for f in fids if f is not None]
    out: dict = {
        "class_names": names,
        "fid_per_class": dict(zip(names, fids)),
        "per_class_n": int(np.bincount(fake_labels, minlength=num_classes).min()),
        "per_class_n_real": int(np.bincount(real_labels, minlength=num_classes).min()),
        **{f"fid_class_{c}": f for c, f in enumerate(fids) if f is not None},
    }
    if scored:
        out.update(fid_class_min=min(scored), fid_class_max=max(scored), fid_class_mean=float(np.mean(scored)))
    if train_dir is not None:
        from . import classifier

        net, info = classifier.load_or_train(train_dir, num_classes, cache_dir)
        per_class = classifier.per_class_accuracy(net, fake_u8, fake_labels, num_classes)
        out.update(info)
        out["class_accuracy"] = classifier.accuracy(net, fake_u8, fake_labels)
        out["class_accuracy_per_class"] = dict(zip(names, per_class))
        # the ceiling: the same classifier on every real image of the reference split
        out["classifier_test_accuracy"] = classifier.accuracy(
            net, np.asarray(reference.images), np.asarray(reference.labels)
        )
        out["classifier_test_count"] = int(len(reference.labels))
    return out
