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
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from . import inception_runtime, threads
from .config import EvalConfig
from .data import load_dataset
from .errors import GanforgeError
from .fileio import atomic_write_bytes
from .progress import progress_enabled
from .weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice, load_torchscript, resolve_inception, torchscript_allowed

FEATURE_LAYER = "2048"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
RESIZE_FILTER = "tf1-bilinear"
REAL_SELECTION_SEED = 0


class MetricsError(GanforgeError, ValueError):
    """Inputs to FID/KID are unusable; the message names the problem and the fix."""


@functools.lru_cache(maxsize=8)
def tf1_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """torch-fidelity's TF1 bilinear resize of one axis as a size_out × size_in matrix.

    The resize is linear and separable, so resizing the identity gives its weights, and an image
    resizes as ``rows @ image @ cols.T``: two small matrix products instead of torch-fidelity's
    gathers (28→299 for 50 images: ~0.1 s instead of ~1.5 s on 2 busy cores), equal to it within
    float rounding (~1e-4 grey levels; tests/test_inception_runtime.py).
    """
    eye = torch.eye(size_in).reshape(size_in, 1, size_in, 1)
    resized = interpolate_bilinear_2d_like_tensorflow1x(eye, size=(size_out, 1), align_corners=False)
    return resized[:, 0, :, 0].T.contiguous()


def uint8_to_inception_input(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 N×C×H×W (C = 1 or 3) → float N×3×299×299 in (u8-128)/128, channels_last unless told not.

    TF1 bilinear resize (``tf1_resize_matrix``); three equal channels (grey replicated, as
    ``UInt8Images`` yields) are resized once. channels_last because oneDNN's convolutions run
    faster in NHWC on CPU (FACTS: ~7 → ~12 img/s); OpenVINO takes plain NCHW and picks its own
    blocked layout.
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise MetricsError(f"expected uint8 N×C×H×W images with C in (1, 3), got {x.dtype} {list(x.shape)}")
    if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]):
        x = x[:, :1]
    # the cached matrices live on the CPU; each batch takes them to its own device
    rows = tf1_resize_matrix(x.shape[2], INCEPTION_SIZE).to(x.device)
    cols = tf1_resize_matrix(x.shape[3], INCEPTION_SIZE).to(x.device)
    x = (rows @ x.float() @ cols.T - 128) / 128
    x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def fold_batchnorm_into_convs(frozen: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Fold each conv's BatchNorm into its weights, in place.

    Every conv in the TorchScript casts its weight to the input's dtype (``weight.to(x.dtype)``),
    which hides the constant weight from the frozen-graph conv–BN folding pass. We only ever feed
    float32 and the weights are float32, so the cast is the identity and can go.
    """
    graph = frozen.graph
    for node in list(graph.nodes()):
        weight = node.inputsAt(0) if node.kind() == "aten::to" else None
        if weight is not None and weight.node().kind() == "prim::Constant" and weight.type().dtype() == torch.float32:
            node.output().replaceAllUsesWith(weight)
            node.destroy()
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_optimize_frozen_graph(graph, True)
    return frozen


def torchscript_to_inference_module(
    module: torch.jit.ScriptModule, fold_batchnorm: bool = True
) -> torch.jit.ScriptModule:
    """Freeze the TorchScript (weights become constants) and optionally fold conv+BN."""
    with torchscript_allowed():
        frozen = torch.jit.freeze(module.eval())
    return fold_batchnorm_into_convs(frozen) if fold_batchnorm else frozen


class InceptionTorchScriptExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around NVIDIA's TF-2015 FID Inception TorchScript.

    Takes uint8 N×C×H×W (C = 1 is replicated to RGB), returns ``(features N×2048 float32,)``.
    On CPU the same network runs in OpenVINO fp32 when ``runtime`` (default
    ``$GANFORGE_INCEPTION_RUNTIME``, ``auto``) allows it (``ganforge.inception_runtime``);
    ``runtime="torchscript"`` is the reference path. There the network is frozen and conv+BN
    folded on the first call per device, so torch-fidelity's ``.cuda()`` still moves the weights
    before freezing.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        fold_batchnorm: bool = True,
        runtime: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MetricsError(
                f"{name} needs feature_extractor_weights_path: pass ganforge.weights.inception_weights_path()"
            )
        self.weights_path = Path(feature_extractor_weights_path)
        self.net = load_torchscript(feature_extractor_weights_path)
        self.fold_batchnorm = fold_batchnorm
        self.runtime = inception_runtime.requested_runtime(runtime)
        self._inference_nets: dict[str, torch.jit.ScriptModule] = {}
        self._fast_nets: dict[str, inception_runtime.OpenVINOInception | None] = {}

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric not in ("fid", "kid", "prc"):
            raise MetricsError(f"the TorchScript Inception has no logits, so it cannot compute {metric!r}")
        return FEATURE_LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, dtype=torch.uint8)

    def inference_net(self, device: torch.device) -> torch.jit.ScriptModule:
        key = str(device)
        if key not in self._inference_nets:
            self._inference_nets[key] = torchscript_to_inference_module(self.net, self.fold_batchnorm)
        return self._inference_nets[key]

    def fast_net(self, device: torch.device) -> inception_runtime.OpenVINOInception | None:
        """The OpenVINO network for CPU input (built once), or None: use the TorchScript."""
        if device.type != "cpu":
            return None
        key = str(device)
        if key not in self._fast_nets:
            self._fast_nets[key] = inception_runtime.fast_inception(
                self.weights_path, self.runtime, torch.get_num_threads()
            )
        return self._fast_nets[key]

    def runtime_name(self, device: torch.device | str = "cpu") -> str:
        """``openvino-<version>`` or ``torchscript``: what computes features on ``device``."""
        fast = self.fast_net(torch.device(device))
        return f"openvino-{fast.version}" if fast is not None else "torchscript"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        with torch.inference_mode(), exact_fp32():
            fast = self.fast_net(x.device)
            if fast is not None:
                return (torch.from_numpy(fast(uint8_to_inception_input(x, channels_last=False).numpy())),)
            return (self.inference_net(x.device)(uint8_to_inception_input(x)),)


if EXTRACTOR_TORCHSCRIPT not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_TORCHSCRIPT, InceptionTorchScriptExtractor)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Disable TF32 convolutions on GPU for the block: they move Inception features by ~1e-3."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def feature_extractor(choice: InceptionChoice, device: str, runtime: str | None = None) -> FeatureExtractorBase:
    """The torch-fidelity extractor for ``choice``, built once per process (loading takes seconds).

    ``runtime`` (default ``$GANFORGE_INCEPTION_RUNTIME``): ``auto``, ``openvino`` or
    ``torchscript``; it applies to the offline TorchScript extractor only.
    """
    runtime = inception_runtime.requested_runtime(runtime) if choice.extractor == EXTRACTOR_TORCHSCRIPT else None
    return _feature_extractor(choice, device, runtime)


@functools.lru_cache(maxsize=8)
def _feature_extractor(choice: InceptionChoice, device: str, runtime: str | None) -> FeatureExtractorBase:
    extra = {"runtime": runtime} if runtime is not None else {}
    return create_feature_extractor(
        choice.extractor,
        [FEATURE_LAYER],
        cuda=device == "cuda",
        verbose=False,
        feature_extractor_weights_path=str(choice.path),
        **extra,
    )


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

    On a small CPU this beats one process with as many threads (2 cores: 8.5 vs 6.0 img/s, see
    README): Inception's convolutions scale poorly across threads at batch 50. ``spawn``, not
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
