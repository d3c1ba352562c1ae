"""The fast Inception path (OpenVINO fp32) against the TorchScript reference, its IR cache, its fallback.

Speed is not asserted here (it lives in `make bench`); these tests check that the fast path
computes the same features and FID as the TorchScript reference on real Fashion-MNIST images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ganforge import inception_runtime, metrics
from ganforge.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
N_PER_SIDE = 16

pytestmark = pytest.mark.skipif(
    inception_runtime.import_openvino() is None, reason="openvino not installed: the TorchScript path is the only one"
)


@pytest.fixture(scope="module")
def fashion_images(fashion_train, fashion_test) -> dict[str, np.ndarray]:
    """The first 16 real Fashion-MNIST train and test images (28 px grey, resized to 299 by the protocol)."""
    return {
        "train": np.asarray(load_dataset(fashion_train).images[:N_PER_SIDE]),
        "test": np.asarray(load_dataset(fashion_test).images[:N_PER_SIDE]),
    }


@pytest.fixture(scope="module")
def features_by_runtime(torchscript, fashion_images) -> dict[str, dict[str, np.ndarray]]:
    return {
        runtime: {
            split: metrics.images_to_features(
                images, batch_size=8, choice=torchscript, device="cpu", workers=1, runtime=runtime
            )
            for split, images in fashion_images.items()
        }
        for runtime in ("torchscript", "openvino")
    }


def test_fast_path_features_match_the_torchscript_reference(features_by_runtime):
    for split in ("train", "test"):
        reference, fast = features_by_runtime["torchscript"][split], features_by_runtime["openvino"][split]
        assert fast.shape == reference.shape == (N_PER_SIDE, 2048)
        assert np.abs(reference).max() > 0.1  # real activations
        assert np.abs(fast - reference).max() < 1e-4, split


def test_fast_path_matches_the_plain_torchscript_on_torch_fidelitys_resize(
    torchscript, fashion_images, features_by_runtime
):
    """End to end against the untouched reference: unfrozen TorchScript on torch-fidelity's own TF1 resize."""
    import torch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = torch.from_numpy(np.array(fashion_images["test"][:4])).expand(-1, 3, -1, -1).float()
    x = (interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False) - 128) / 128
    with torch.inference_mode():
        reference = metrics.load_torchscript(torchscript.path)(x.contiguous()).numpy()
    assert np.abs(features_by_runtime["openvino"]["test"][:4] - reference).max() < 1e-4


def test_fast_path_fid_equals_the_reference_to_two_decimals(features_by_runtime):
    fids = {runtime: metrics.features_to_fid(f["train"], f["test"]) for runtime, f in features_by_runtime.items()}
    assert fids["torchscript"] > 1.0
    assert abs(fids["openvino"] - fids["torchscript"]) < 0.005, fids
    kids = {
        runtime: metrics.features_to_kid(f["train"], f["test"], subset_size=N_PER_SIDE, subsets=1)[0]
        for runtime, f in features_by_runtime.items()
    }
    assert kids["openvino"] == pytest.approx(kids["torchscript"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("channels, height, width", [(1, 28, 28), (3, 28, 28), (3, 32, 40)])
def test_matrix_resize_equals_torch_fidelitys_tf1_bilinear(fashion_images, channels, height, width):
    import torch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    if (channels, height, width) == (1, 28, 28):
        images = torch.from_numpy(np.array(fashion_images["test"]))  # real Fashion-MNIST
    else:
        images = torch.from_numpy(
            np.random.default_rng(height).integers(0, 256, (4, channels, height, width), dtype=np.uint8)
        )
    reference = interpolate_bilinear_2d_like_tensorflow1x(
        images.expand(-1, 3, -1, -1).float(), size=(299, 299), align_corners=False
    )
    ours = metrics.uint8_to_inception_input(images, channels_last=False) * 128 + 128
    assert ours.shape == reference.shape == (len(images), 3, 299, 299)
    assert (ours - reference).abs().max().item() < 1e-3  # grey levels: float rounding only


def test_fast_path_is_the_default_on_cpu(torchscript, monkeypatch):
    monkeypatch.delenv(inception_runtime.RUNTIME_ENV, raising=False)
    extractor = metrics.feature_extractor(torchscript, "cpu")
    assert extractor.runtime == "auto"
    assert extractor.runtime_name("cpu").startswith("openvino-")
    assert metrics.feature_extractor(torchscript, "cpu", "torchscript").runtime_name("cpu") == "torchscript"
    monkeypatch.setenv(inception_runtime.RUNTIME_ENV, "torchscript")
    assert metrics.feature_extractor(torchscript, "cpu").runtime_name("cpu") == "torchscript"
    monkeypatch.setenv(inception_runtime.RUNTIME_ENV, "tensorrt")
    with pytest.raises(inception_runtime.InceptionRuntimeError, match="GANFORGE_INCEPTION_RUNTIME='tensorrt'"):
        metrics.feature_extractor(torchscript, "cpu")


def test_fast_path_in_worker_processes_matches_the_reference(torchscript, fashion_images, features_by_runtime):
    two = metrics.images_to_features(
        fashion_images["test"][:6], batch_size=4, choice=torchscript, device="cpu", workers=2, runtime="openvino"
    )
    assert np.abs(two - features_by_runtime["torchscript"]["test"][:6]).max() < 1e-4


@pytest.mark.slow
def test_converted_model_is_cached_reused_and_rebuilt_when_stale(torchscript, fashion_images, tmp_path, caplog):
    weights = tmp_path / "inception" / "default_1.pt"
    weights.parent.mkdir()
    os.link(torchscript.path, weights)  # same bytes, its own folder: the shared cache stays untouched
    ov = inception_runtime.import_openvino()
    sha1 = inception_runtime.weights_sha1(weights)
    version = inception_runtime.openvino_version(ov)
    assert f"openvino=={version}" == inception_runtime.OPENVINO_REQUIREMENT  # the version measured (README)
    expected = weights.parent / f"default_1.{sha1[:16]}.openvino-{version}"
    leftover = weights.parent / f"default_1.{sha1[:16]}.openvino-2000.0.0"  # an older OpenVINO's conversion
    leftover.mkdir()

    with caplog.at_level("INFO", logger="ganforge.inception_runtime"):
        built = inception_runtime.openvino_ir(weights)
    assert built == expected and "converting" in caplog.text
    meta = json.loads((built / inception_runtime.META_JSON).read_text())
    assert meta["weights_sha1"] == sha1 and meta["openvino"] == version and meta["precision"] == "f32"
    assert not leftover.exists()
    names = {p.name for p in weights.parent.iterdir()} - {expected.name + ".lock"}
    assert names == {"default_1.pt", expected.name}  # no temporary directory left behind
    first_inode = (built / inception_runtime.MODEL_BIN).stat().st_ino

    caplog.clear()
    with caplog.at_level("INFO", logger="ganforge.inception_runtime"):
        assert inception_runtime.openvino_ir(weights) == expected
    assert "converting" not in caplog.text
    assert (built / inception_runtime.MODEL_BIN).stat().st_ino == first_inode  # reused, not rewritten

    with open(built / inception_runtime.MODEL_BIN, "r+b") as f:  # a truncated weight file: stale
        f.truncate(1000)
    with caplog.at_level("INFO", logger="ganforge.inception_runtime"):
        rebuilt = inception_runtime.openvino_ir(weights)
    assert rebuilt == expected and "converting" in caplog.text
    assert (rebuilt / inception_runtime.MODEL_BIN).stat().st_size == meta["bin_bytes"]

    net = inception_runtime.OpenVINOInception(rebuilt, threads=2)
    import torch

    images = torch.from_numpy(np.array(fashion_images["test"][:3]))
    x = metrics.uint8_to_inception_input(images, channels_last=False).numpy()
    reference = metrics.images_to_features(
        fashion_images["test"][:3], choice=torchscript, device="cpu", workers=1, runtime="torchscript"
    )
    assert np.abs(net(x) - reference).max() < 1e-4


def test_the_fallback_message_names_the_pinned_requirement():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert inception_runtime.OPENVINO_REQUIREMENT in deps


def test_cache_key_names_the_weights_sha1_and_the_runtime_version(tmp_path):
    weights = tmp_path / "default_1.pt"
    a = inception_runtime.converted_dir(weights, "a" * 40, "2026.4.1")
    assert a.parent == tmp_path and a.name == f"default_1.{'a' * 16}.openvino-2026.4.1"
    assert inception_runtime.converted_dir(weights, "b" * 40, "2026.4.1") != a
    assert inception_runtime.converted_dir(weights, "a" * 40, "2026.5.0") != a


BLOCKED_IMPORT = textwrap.dedent("""
    import importlib.abc, json, sys

    class BlockOpenVINO(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "openvino" or name.startswith("openvino."):
                raise ImportError(f"{name} blocked by the test")
            return None

    sys.meta_path.insert(0, BlockOpenVINO())
    import numpy as np
    import torch
    torch.set_num_threads(2)
    from ganforge import metrics
    from ganforge.weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice

    choice = InceptionChoice(EXTRACTOR_TORCHSCRIPT, __import__("pathlib").Path(sys.argv[1]))
    images = np.load(sys.argv[2])
    np.save(sys.argv[3], metrics.images_to_features(images, batch_size=4, choice=choice, device="cpu", workers=1))
    metrics.images_to_features(images[:2], batch_size=4, choice=choice, device="cpu", workers=1)  # no second line
    try:
        metrics.images_to_features(images[:2], choice=choice, device="cpu", workers=1, runtime="openvino")
        required = "no error"
    except Exception as e:
        required = f"{type(e).__name__}: {e}"
    print(json.dumps({"openvino_loaded": "openvino" in sys.modules,
                      "runtime": metrics.feature_extractor(choice, "cpu").runtime_name("cpu"), "required": required}))
""")


def test_without_openvino_features_come_from_torchscript_with_one_log_line(torchscript, fashion_images, tmp_path):
    images = fashion_images["test"][:4]
    np.save(tmp_path / "images.npy", images)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="2")
    env.pop(inception_runtime.RUNTIME_ENV, None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKED_IMPORT,
            str(torchscript.path),
            str(tmp_path / "images.npy"),
            str(tmp_path / "features.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["openvino_loaded"] is False and report["runtime"] == "torchscript"
    assert "pip install openvino==" in report["required"] and "InceptionRuntimeError" in report["required"]
    assert done.stderr.count("Inception features on the TorchScript reference path") == 1, done.stderr[-3000:]
    assert "pip install openvino==" in done.stderr
    reference = metrics.images_to_features(
        images, batch_size=4, choice=torchscript, device="cpu", workers=1, runtime="torchscript"
    )
    assert np.abs(np.load(tmp_path / "features.npy") - reference).max() < 1e-4


def test_openvino_conversion_never_sends_telemetry():
    """convert_model's telemetry (Google Analytics, on unless a consent file says no) gets its no-op stub."""
    code = (
        "from ganforge.inception_runtime import import_openvino; import_openvino(); "
        "import openvino.tools.ovc.convert_impl as c, openvino.tools.ovc.telemetry_utils as u; "
        "print(c.tm.__name__, u.tm.__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI=true would switch it off by itself
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["openvino.tools.ovc.telemetry_stub"] * 2, out.stdout
