"""Class-conditional generation, outputs: per-class FID, the class-accuracy classifier
(trained once per dataset version, cached) and class choice in ``ganforge generate``.

Real parts only: real Fashion-MNIST subsets, a real tiny cdcgan training, the CLI in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from conftest import cli_env
from ganforge import data
from ganforge.config import build_config
from ganforge.labels import balanced_labels
from ganforge.train import train


def test_per_class_fid_pairs_each_class_with_its_own_reference():
    from ganforge.class_metrics import per_class_fid

    rng = np.random.default_rng(0)
    real_labels, fake_labels = balanced_labels(300, 3), balanced_labels(300, 3)
    centre = np.eye(3, 8) * 10
    real = rng.normal(size=(300, 8)) + centre[real_labels]
    fake = rng.normal(size=(300, 8)) + centre[fake_labels]
    right = per_class_fid(fake, fake_labels, real, real_labels, 3)
    wrong = per_class_fid(fake, (fake_labels + 1) % 3, real, real_labels, 3)
    assert max(right) < 2 and min(wrong) > 100


def test_classifier_is_trained_once_per_dataset_version(fashion_train, fashion_test, tmp_path):
    from ganforge import classifier

    net, info = classifier.load_or_train(fashion_train, 10, tmp_path)
    assert not info["classifier_cached"]
    ds = data.load_dataset(fashion_test)
    acc = classifier.accuracy(net, np.asarray(ds.images), np.asarray(ds.labels))
    assert acc > 0.3, acc  # 512 training images, 8 steps of 128: weak, but 3× chance (0.1)
    again, info2 = classifier.load_or_train(fashion_train, 10, tmp_path)
    assert info2["classifier_cached"] and info2["classifier_path"] == info["classifier_path"]
    assert classifier.accuracy(again, np.asarray(ds.images), np.asarray(ds.labels)) == acc
    # another version of the labels is another classifier
    relabelled = tmp_path / "relabelled"
    shutil.copytree(fashion_train, relabelled)
    np.save(relabelled / "labels.npy", (np.load(relabelled / "labels.npy") + 1) % 10)
    assert classifier.cache_path(tmp_path, "x", "a") != classifier.cache_path(tmp_path, "x", "b")
    _, info3 = classifier.load_or_train(relabelled, 10, tmp_path)
    assert not info3["classifier_cached"] and info3["classifier_path"] != info["classifier_path"]


def _generate(*args):
    return subprocess.run(
        [sys.executable, "-m", "ganforge.cli", "generate", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_a_class_a_per_class_grid_and_in_class_interpolations(cdcgan_run, tmp_path):
    from PIL import Image

    from ganforge.generate import generate_to_dir

    ckpt = cdcgan_run / "checkpoint.pt"
    done = _generate(
        "--model", str(ckpt), "--class", "sneaker", "-n", "6", "--interpolate", "4", "--out", str(tmp_path / "sneakers")
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "sneakers" / "generation.json").read_text())
    assert manifest["class"] == "Sneaker" and manifest["class_id"] == 7
    by_id = generate_to_dir(str(ckpt), tmp_path / "seven", n=6, interpolate=4, class_="7")
    assert by_id["grid"].read_bytes() == (tmp_path / "sneakers" / "grid.png").read_bytes()
    assert by_id["interpolation"].read_bytes() == (tmp_path / "sneakers" / "interpolation.png").read_bytes()
    other = generate_to_dir(str(ckpt), tmp_path / "bags", n=6, class_="bag")
    assert other["grid"].read_bytes() != by_id["grid"].read_bytes()
    grid = generate_to_dir(str(ckpt), tmp_path / "grid", n=5, per_class=True)
    assert Image.open(grid["grid"]).size == (2 + 5 * 30, 2 + 10 * 30)  # 5 columns, one row per class
    assert len(list((tmp_path / "grid" / "images").iterdir())) == 50
    # row k of the per-class grid is class k drawn from the same latents
    row7 = Image.open(tmp_path / "grid" / "images" / f"{7 * 5:05d}.png").tobytes()
    assert row7 == Image.open(tmp_path / "seven" / "images" / "00000.png").tobytes()


def test_generate_refuses_an_unknown_class_and_class_on_an_unconditional_model(cdcgan_run, fashion_train, tmp_path):
    done = _generate("--model", str(cdcgan_run / "checkpoint.pt"), "--class", "boots", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown class 'boots'; choose one of: 0 T-shirt/top, 1 Trouser" in done.stderr
    assert not (tmp_path / "x").exists()
    plain = tmp_path / "dcgan"
    train(build_config("dcgan", "tiny", {"train": {"max_steps": 1}}), fashion_train, plain)
    done = _generate("--model", str(plain / "checkpoint.pt"), "--class", "sneaker", "--out", str(tmp_path / "y"))
    assert done.returncode == 2 and "is unconditional" in done.stderr


def test_evaluate_cli_scores_classes_with_the_training_split(
    cdcgan_run, fashion_train, fashion_test, torchscript, tmp_path
):
    """`ganforge evaluate --train-data` (what make quality passes): per-class FID and the class accuracy
    with its ceiling, for class-balanced samples."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganforge.cli",
            "evaluate",
            "--checkpoint",
            str(cdcgan_run / "checkpoint.pt"),
            "--data",
            str(fashion_test),
            "--train-data",
            str(fashion_train),
            "--n",
            "20",
            "--out",
            str(tmp_path / "m.json"),
        ],
        env=cli_env(GANFORGE_CACHE=str(tmp_path / "cache"), GANFORGE_INCEPTION_WEIGHTS=str(torchscript.path)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["per_class_n"] == 2 and set(metrics["fid_per_class"]) == set(metrics["class_names"])
    assert 0 <= metrics["class_accuracy"] <= 1 and metrics["classifier_test_count"] == 512
    assert metrics["classifier_cached"] is False and (tmp_path / "cache" / "classifiers").is_dir()
