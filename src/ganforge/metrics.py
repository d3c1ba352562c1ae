"""FID and KID through torch-fidelity: images → features → statistics → metric.

Features come from the TF-2015 Inception (see ``ganforge.weights``): torch-fidelity's own
``inception-v3-compat`` when its weights file is present, otherwise NVIDIA's StyleGAN FID
Inception as TorchScript, registered here as a torch-fidelity feature extractor. Both resize
with TensorFlow 1.x bilinear (``align_corners=False``, no half-pixel centres): torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x``, which matches the resize NVIDIA's network had
built in to ~1e-3 grey levels, whereas ``F.interpolate(bilinear)`` shifts by half a source pixel.

Feature extraction, the Fréchet distance and the KID estimator are torch-fidelity's
(``get_featuresdict_from_dataset``, ``fid_statistics_to_metric``, ``kid_features_to_metric``).
``calculate_metrics`` itself is not used: its cache is keyed by input names, while ganforge keys
real features by the dataset's sha256, the extractor and N, and reuses them for FID and KID.

The Inception extractor itself lives in ``inception_features``; its public names are
re-exported here.
"""

from __future__ import annotations

import functools
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from . import threads
from .config import EvalConfig
from .data import load_dataset
from .fileio import atomic_write_bytes
from .inception_features import (
    FEATURE_DIM,
    FEATURE_LAYER,
    INCEPTION_SIZE,
    RESIZE_FILTER,
    InceptionTorchScriptExtractor,
    MetricsError,
    default_device,
    exact_fp32,
    feature_extractor,
    fold_batchnorm_into_convs,
    tf1_resize_matrix,
    torchscript_to_inference_module,
    uint8_to_inception_input,
)
from .progress import progress_enabled
from .weights import InceptionChoice, load_torchscript, resolve_inception

__all__ = [
    "EVAL_WORKERS_ENV",
    "FEATURE_DIM",
    "FEATURE_LAYER",
    "INCEPTION_SIZE",
    "REAL_SELECTION_SEED",
    "RESIZE_FILTER",
    "InceptionTorchScriptExtractor",
    "MetricsError",
    "UInt8Images",
    "check_same_image_shape",
    "check_uint8_images",
    "default_device",
    "eval_workers",
    "evaluate_images",
    "exact_fp32",
    "fake_to_uint8",
    "feature_extractor",
    "features_to_fid",
    "features_to_kid",
    "features_to_statistics",
    "fold_batchnorm_into_convs",
    "images_to_features",
    "load_torchscript",
    "read_cached_features",
    "real_features",
    "real_features_cache_path",
    "resolve_inception",
    "select_real_indices",
    "statistics_to_fid",
    "tf1_resize_matrix",
    "torchscript_to_inference_module",
    "uint8_to_inception_input",
    "write_cached_features",
]

REAL_SELECTION_SEED = 0


class UInt8Images(torch.utils.data.Dataset):
    """N×C×H×W uint8 array (memmaps included) as a Dataset of 3×H×W uint8 tensors, as torch-fidelity expects."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[i])).expand(3, -1, -1)


def check_uint8_images(images: np.ndarray, what: str) -> None:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1] not in (1, 3)
    ):
        shape = getattr(images, "shape", None)
        raise MetricsError(
            f"{what} must be a uint8 N×C×H×W array with C in (1, 3), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {shape}; "
            "convert generator output with fake_to_uint8"
        )
    if len(images) < 2:
        raise MetricsError(f"{what} holds {len(images)} image(s); FID/KID need at least 2")


EVAL_WORKERS_ENV = "GANFORGE_EVAL_WORKERS"


def eval_workers() -> int:
    """CPU processes for feature extraction (GANFORGE_EVAL_WORKERS, default 1): an execution knob,
    not part of the config, since it does not change the features."""
    raw = os.environ.get(EVAL_WORKERS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise MetricsError(
            f"{EVAL_WORKERS_ENV}={raw!r} must be a positive integer (CPU processes for Inception "
            "features; e.g. the number of cores)"
        )
    return int(raw)


def _init_feature_worker() -> None:
    os.environ[EVAL_WORKERS_ENV] = "1"
    torch.set_num_threads(1)


def _features_of_slice(
    images: np.ndarray, batch_size: int, choice: InceptionChoice, runtime: str | None = None
) -> np.ndarray:
    return images_to_features(images, batch_size, choice, "cpu", workers=1, runtime=runtime)


def _features_in_processes(
    images: np.ndarray, batch_size: int, choice: InceptionChoice, workers: int, runtime: str | None = None
) -> np.ndarray:
    """Contiguous slices in ``workers`` single-threaded processes, results in order.

    On a small CPU this beats one process with as many threads (README): Inception's
    convolutions scale poorly across threads at batch 50. ``spawn``, not
    ``fork``: a forked child of a process that already ran OpenMP can hang.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    slices = np.array_split(np.asarray(images), workers)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_feature_worker
    ) as pool:
        parts = list(
            pool.map(_features_of_slice, slices, [batch_size] * workers, [choice] * workers, [runtime] * workers)
        )
    return np.concatenate(parts)


def images_to_features(
    images: np.ndarray,
    batch_size: int = 50,
    choice: InceptionChoice | None = None,
    device: str | None = None,
    workers: int | None = None,
    runtime: str | None = None,
) -> np.ndarray:
    """uint8 N×C×H×W → Inception pool features, float64 N×2048 (torch-fidelity's batched extraction).

    ``workers`` > 1 (default: GANFORGE_EVAL_WORKERS) splits the work over that many CPU processes,
    each with one thread. ``runtime``: see ``feature_extractor`` (default: OpenVINO on CPU when installed).
    """
    check_uint8_images(images, "images")
    choice = choice or resolve_inception()
    device = device or default_device()
    workers = eval_workers() if workers is None else workers
    if workers > 1 and device == "cpu":
        workers = threads.cap_processes(workers)  # one thread each: never more workers than free cores
    if workers > 1 and device == "cpu" and len(images) >= 2 * workers:
        return _features_in_processes(images, batch_size, choice, workers, runtime)
    extractor = feature_extractor(choice, device, runtime)
    with torch.inference_mode(), exact_fp32():
        # verbose: torch-fidelity's own tqdm bar over the batches ("Processing samples"), with ETA.
        featuresdict = get_featuresdict_from_dataset(
            UInt8Images(images),
            extractor,
            batch_size,
            cuda=device == "cuda",
            save_cpu_ram=True,
            verbose=progress_enabled(),
        )
    return featuresdict[FEATURE_LAYER].numpy().astype(np.float64)


def features_to_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features N×D → (mean D, covariance D×D), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise MetricsError(f"need features N×D with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def statistics_to_fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians (torch-fidelity's ``fid_statistics_to_metric``)."""
    as64 = functools.partial(np.asarray, dtype=np.float64)
    stats = [{"mu": as64(mu), "sigma": as64(sigma)} for mu, sigma in ((mu1, sigma1), (mu2, sigma2))]
    if stats[0]["mu"].shape != stats[1]["mu"].shape or stats[0]["sigma"].shape != stats[1]["sigma"].shape:
        raise MetricsError(
            f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def features_to_fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID straight from two feature sets.

    With fewer samples than feature dimensions (every run below N = 2048), the covariances have
    rank < N and tr sqrt(Σ1 Σ2) equals the nuclear norm of A1·A2ᵀ / sqrt((n1-1)(n2-1)), A = centred
    features: an N×N SVD instead of the 2048×2048 non-symmetric eigensolve (tens of seconds on
    2 cores) that would otherwise dominate a small evaluation. Otherwise: torch-fidelity's formula.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise MetricsError(f"need two feature sets N×D with equal D and N >= 2, got {f1.shape} and {f2.shape}")
    (n1, dim), n2 = f1.shape, len(f2)
    if min(n1, n2) >= dim:
        return statistics_to_fid(*features_to_statistics(f1), *features_to_statistics(f2))
    centred1, centred2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    trace1, trace2 = (centred1**2).sum() / (n1 - 1), (centred2**2).sum() / (n2 - 1)
    tr_covmean = np.linalg.svd(centred1 @ centred2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    return float(diff @ diff + trace1 + trace2 - 2 * tr_covmean)


def features_to_kid(
    features1: np.ndarray, features2: np.ndarray, subset_size: int, subsets: int, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets.

    ``subset_size`` is clipped to the smaller feature set, so small evaluations still run.
    """
    subset_size = min(subset_size, len(features1), len(features2))
    if subset_size < 2:
        raise MetricsError(f"KID needs at least 2 samples per side, got {len(features1)} and {len(features2)}")
    out = kid_features_to_metric(
        torch.from_numpy(np.asarray(features1, np.float64)),
        torch.from_numpy(np.asarray(features2, np.float64)),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def select_real_indices(count: int, n: int, seed: int = REAL_SELECTION_SEED) -> np.ndarray:
    """All indices when n >= count, else a sorted seeded random subset of n (same n and seed → same images)."""
    if n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


def real_features_cache_path(
    cache_dir: str | os.PathLike, dataset_sha256: str, extractor: str, n: int, seed: int = REAL_SELECTION_SEED
) -> Path:
    return Path(cache_dir) / "real-features" / f"{dataset_sha256[:16]}-{extractor}-n{n}-seed{seed}.npz"


def read_cached_features(path: Path, dataset_sha256: str) -> np.ndarray | None:
    """Features from a cache file, or None when it is absent or was written for another dataset."""
    if not path.is_file():
        return None
    with np.load(path) as cached:
        if str(cached["dataset_sha256"]) != dataset_sha256 or cached["features"].shape[1:] != (FEATURE_DIM,):
            return None
        return cached["features"].astype(np.float64)


def write_cached_features(path: Path, features: np.ndarray, dataset_sha256: str, indices: np.ndarray) -> None:
    # float32 is what the network produces, so nothing is lost and the file is half the size
    buf = io.BytesIO()
    np.savez(buf, features=features.astype(np.float32), dataset_sha256=np.array(dataset_sha256), indices=indices)
    atomic_write_bytes(path, buf.getvalue())


def real_features(
    dataset_dir: str | os.PathLike,
    n: int,
    cache_dir: str | os.PathLike,
    batch_size: int = 50,
    choice: InceptionChoice | None = None,
    seed: int = REAL_SELECTION_SEED,
    workers: int | None = None,
) -> tuple[np.ndarray, bool]:
    """Features of min(n, count) real images of a prepared dataset, cached by sha256 + extractor + N + seed.

    Returns (features float64, whether they came from the cache).
    """
    dataset = load_dataset(dataset_dir)
    sha = dataset.manifest["sha256"]
    choice = choice or resolve_inception()
    indices = select_real_indices(len(dataset.images), n, seed)
    path = real_features_cache_path(cache_dir, sha, choice.extractor, len(indices), seed)
    cached = read_cached_features(path, sha)
    if cached is not None:
        return cached, True
    features = images_to_features(np.asarray(dataset.images[indices]), batch_size, choice, workers=workers)
    write_cached_features(path, features, sha, indices)
    return features, False


def fake_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] → uint8 array: (x + 1) · 127.5, rounded, clamped to [0, 255]."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def check_same_image_shape(fake: np.ndarray, real_shape: tuple, dataset_dir: str | os.PathLike) -> None:
    if tuple(fake.shape[1:]) != tuple(real_shape[1:]):
        raise MetricsError(
            f"generated images are C×H×W {list(fake.shape[1:])} but the real dataset {dataset_dir} "
            f"holds {list(real_shape[1:])}; evaluate against the dataset the model was trained on"
        )


def evaluate_images(
    fake: np.ndarray,
    real_dataset_dir: str | os.PathLike,
    eval_cfg: EvalConfig,
    cache_dir: str | os.PathLike,
    choice: InceptionChoice | None = None,
    prefix_n: int | None = None,
    features_out: dict | None = None,
    workers: int | None = None,
) -> dict:
    """FID and KID of generated uint8 images against ``eval_cfg.n_samples`` real images of a prepared dataset.

    Real features are cached (see ``real_features``). When the dataset holds fewer real images
    than asked for, all are used and ``n_real`` says how many. ``prefix_n`` adds
    ``"prefix": {"n", "fid", "kid_mean", "kid_std"}`` for the first prefix_n generated images
    alone (the FID curve's point for this generator, without extracting features again). ``workers``: CPU
    processes for the Inception features (default: GANFORGE_EVAL_WORKERS, see ``images_to_features``).
    """
    started = time.perf_counter()
    check_uint8_images(fake, "generated images")
    manifest = load_dataset(real_dataset_dir).manifest
    check_same_image_shape(fake, tuple(manifest["shape"]), real_dataset_dir)
    choice = choice or resolve_inception()
    real, cached = real_features(
        real_dataset_dir, eval_cfg.n_samples, cache_dir, eval_cfg.batch_size, choice, workers=workers
    )
    real_seconds = time.perf_counter() - started
    fake_started = time.perf_counter()
    fake_features = images_to_features(fake, eval_cfg.batch_size, choice, workers=workers)
    fake_seconds = time.perf_counter() - fake_started
    if features_out is not None:  # for scores computed from the same features (per-class FID)
        features_out.update(fake=fake_features, real=real)
    fid = features_to_fid(fake_features, real)
    kid_mean, kid_std = features_to_kid(fake_features, real, eval_cfg.kid_subset_size, eval_cfg.kid_subsets)
    extra = {}
    if prefix_n and prefix_n < len(fake_features):
        head = fake_features[:prefix_n]
        p_mean, p_std = features_to_kid(head, real, eval_cfg.kid_subset_size, eval_cfg.kid_subsets)
        extra["prefix"] = {"n": prefix_n, "fid": features_to_fid(head, real), "kid_mean": p_mean, "kid_std": p_std}
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n": len(fake),
        "n_real": len(real),
        "n_real_requested": eval_cfg.n_samples,
        "extractor": choice.extractor,
        "resize": RESIZE_FILTER,
        "dataset_sha256": manifest["sha256"],
        "real_stats_cached": cached,
        "real_seconds": real_seconds,
        "feature_img_per_s": len(fake) / fake_seconds,
        "seconds": time.perf_counter() - started,
        **extra,
    }
