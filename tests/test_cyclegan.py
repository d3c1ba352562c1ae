"""CycleGAN: domain prep from real Fashion-MNIST labels and user folders, the ResNet/PatchGAN
models, the image pool, bitwise resume, translation of user files with per-file errors, and evaluation."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_DIR
from ganforge.checkpoint import CYCLEGAN_STATE_KEYS, list_snapshots, read_checkpoint
from ganforge.cli import main
from ganforge.config import ConfigError, build_config
from ganforge.cyclegan import ImagePool, load_translators, prepare_domain, train_cyclegan
from ganforge.data import load_dataset
from ganforge.evaluate import is_metrics_json
from ganforge.models import build_models
from ganforge.stop import Stopped


def _idx(stem: str) -> np.ndarray:
    """An IDX file read directly (not through ganforge.data): the magic/dims header, then the bytes."""
    raw = gzip.decompress((FASHION_DIR / f"{stem}.gz").read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict:
    cfg = build_config("cyclegan", "tiny")
    root = tmp_path_factory.mktemp("cyclegan-data")
    return {
        (d, s): (prepare_domain(cfg.data, d, root / f"{s}_{d}", s), root / f"{s}_{d}")
        for d in ("a", "b")
        for s in ("train", "test")
    }


@pytest.fixture(scope="module")
def cyclegan_run(domains, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cyclegan-run")
    train_cyclegan(build_config("cyclegan", "tiny"), domains["a", "train"][1], domains["b", "train"][1], out)
    return out


def test_default_domains_are_sneakers_and_ankle_boots_chosen_by_the_idx_labels(domains):
    cfg = build_config("cyclegan", "tiny")
    images, labels = _idx("train-images-idx3-ubyte"), _idx("train-labels-idx1-ubyte")
    for domain, cls, name in (("a", 7, "Sneaker"), ("b", 9, "Ankle boot")):
        manifest, path = domains[domain, "train"]
        expected = images[labels == cls][: cfg.data.limit]
        assert np.array_equal(load_dataset(path).images[:, 0], expected)
        assert (manifest["domain"], manifest["domain_class"], manifest["domain_class_name"]) == (domain, cls, name)
    test_images, test_labels = _idx("t10k-images-idx3-ubyte"), _idx("t10k-labels-idx1-ubyte")
    assert np.array_equal(load_dataset(domains["b", "test"][1]).images[:, 0], test_images[test_labels == 9][:64])


def test_two_user_folders_are_the_two_domains(tmp_path):
    for name, count, value in (("horses", 5, 40), ("zebras", 3, 200)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(np.full((28, 28), value + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    cfg = build_config(
        "cyclegan",
        "tiny",
        [
            f"data.source={tmp_path / 'horses'}",
            f"data.source_b={tmp_path / 'zebras'}",
            "data.class_a=-1",
            "data.class_b=-1",
        ],
    )
    a = prepare_domain(cfg.data, "a", tmp_path / "a", "train")
    b = prepare_domain(cfg.data, "b", tmp_path / "b", "train")
    assert (a["count"], b["count"]) == (5, 3)
    assert load_dataset(tmp_path / "b").images[:, 0, 0, 0].tolist() == [200, 201, 202]
    with pytest.raises(ConfigError, match="two domains"):
        build_config("cyclegan", "tiny", ["data.class_b=7"])


@pytest.mark.parametrize("resolution", [28, 32, 64])
def test_resnet_generator_keeps_the_shape_and_patchgan_scores_patches(resolution):
    cfg = build_config("cyclegan", "tiny", [f"data.resolution={resolution}", "model.n_blocks=3"])
    G, D = build_models(cfg.model, cfg.data)
    x = torch.rand(2, 1, resolution, resolution) * 2 - 1
    y = G(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    scores = D(x)
    assert scores.shape[:2] == (2, 1) and scores.shape[2] > 1  # a grid of patch scores, not one logit
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in G.modules()) == 2 * 3 + 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*G.modules(), *D.modules()])


def test_image_pool_returns_new_fakes_until_full_then_mixes_in_past_ones():
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first, torch.Generator().manual_seed(0)), first)
    later = torch.arange(10.0, 74.0).view(64, 1, 1, 1)
    out = pool.query(later, torch.Generator().manual_seed(1))
    from_pool = [v for v in out.flatten().tolist() if v not in later.flatten().tolist()]
    assert 0 < len(from_pool) and set(from_pool) <= {0.0, 1.0, 2.0, 3.0}  # some past fakes came back
    assert len(pool.images) == 4
    again = ImagePool(4, first)
    assert torch.equal(again.query(later, torch.Generator().manual_seed(1)), out)  # a function of state and seed


def test_resumed_run_equals_an_uninterrupted_one_bitwise(domains, cyclegan_run, tmp_path):
    cfg = build_config("cyclegan", "tiny")
    a, b = domains["a", "train"][1], domains["b", "train"][1]
    half = train_cyclegan(build_config("cyclegan", "tiny", ["train.max_steps=2"]), a, b, tmp_path)
    assert half.step == 2
    resumed = train_cyclegan(cfg, a, b, tmp_path, resume=True)
    assert resumed.step == cfg.train.max_steps
    ref, got = read_checkpoint(cyclegan_run / "checkpoint.pt"), read_checkpoint(tmp_path / "checkpoint.pt")
    for key in CYCLEGAN_STATE_KEYS:
        assert key in ref
    for key in ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b"):
        assert all(torch.equal(ref[key][k], got[key][k]) for k in ref[key]), key
    assert torch.equal(ref["pool_a"], got["pool_a"]) and len(ref["pool_a"]) == cfg.train.pool_size
    assert not torch.equal(ref["G_ab"]["net.1.weight"], ref["G_ab_ema"]["net.1.weight"])
    assert (cyclegan_run / "samples" / "epoch_001.png").read_bytes()[:4] == b"\x89PNG"


def test_sigterm_stops_at_the_step_with_its_checkpoint_and_resume_is_bitwise(domains, cyclegan_run, tmp_path):
    """A real SIGTERM, sent to this process by the loss logger at step 1, stops the loop at that step with a
    checkpoint there (the periodic one would come at step 2); resumed, the run ends as the uninterrupted one."""
    cfg = build_config("cyclegan", "tiny", ["train.log_every=1"])  # a logger call at step 1; the same steps
    a, b = domains["a", "train"][1], domains["b", "train"][1]

    def terminate(step, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Stopped) as stopped:
            train_cyclegan(cfg, a, b, tmp_path, on_metrics=terminate)
    finally:
        signal.signal(signal.SIGTERM, previous)  # a stopped process ignores further SIGTERMs; pytest must not
    assert (stopped.value.signum, stopped.value.step, stopped.value.exit_status) == (signal.SIGTERM, 1, 143)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    train_cyclegan(cfg, a, b, tmp_path, resume=True)
    ref, got = read_checkpoint(cyclegan_run / "checkpoint.pt"), read_checkpoint(tmp_path / "checkpoint.pt")
    assert got["step"] == cfg.train.max_steps
    for key in ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b"):
        assert all(torch.equal(ref[key][k], got[key][k]) for k in ref[key]), key
    assert torch.equal(ref["pool_a"], got["pool_a"]) and torch.equal(ref["pool_b"], got["pool_b"])


def test_translate_writes_one_png_per_input_and_names_bad_files(cyclegan_run, domains, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, image in enumerate(load_dataset(domains["a", "test"][1]).images[:3]):
        Image.fromarray(np.asarray(image[0])).save(inputs / f"shoe{i}.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(cyclegan_run),
                "--direction",
                "a2b",
                "--input",
                str(inputs),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["shoe0.png", "shoe1.png", "shoe2.png"]
    G_ab, _, _ = load_translators(cyclegan_run)
    x = torch.from_numpy(np.array(Image.open(inputs / "shoe1.png"))).float()[None, None] / 127.5 - 1
    expected = ((G_ab(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0, 0].numpy()
    assert np.array_equal(np.asarray(Image.open(out / "shoe1.png")), expected)

    capsys.readouterr()
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(inputs / "big.png")
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(cyclegan_run),
                "--direction",
                "b2a",
                "--input",
                str(inputs),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(inputs / "big.png") in err and "30×32 px" in err and "28×28" in err
    assert not (tmp_path / "o2").exists()  # every input is checked before anything is written
    (inputs / "big.png").write_bytes(b"not a png")
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(cyclegan_run),
                "--direction",
                "b2a",
                "--input",
                str(inputs / "big.png"),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert f"cannot translate {inputs / 'big.png'}: it is not a readable image" in capsys.readouterr().err
    (inputs / "big.png").unlink()
    before = (out / "shoe0.png").read_bytes()
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(cyclegan_run),
                "--direction",
                "b2a",
                "--input",
                str(inputs),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err and (out / "shoe0.png").read_bytes() == before


def test_evaluation_scores_both_directions_against_held_out_real_images(cyclegan_run, domains, tmp_path, torchscript):
    from ganforge.translate import evaluate_translation

    G_ab, G_ba, cfg = load_translators(cyclegan_run)
    m = evaluate_translation(
        G_ab,
        G_ba,
        cfg,
        domains["a", "test"][1],
        domains["b", "test"][1],
        tmp_path / "eval",
        tmp_path / "cache",
        choice=torchscript,
    )
    assert m["fid"] == pytest.approx((m["fid_a2b"] + m["fid_b2a"]) / 2) and m["fid_a2b"] > 0
    assert m["n_a"] == m["n_b"] == cfg.eval.n_samples
    assert 0 < m["cycle_l1_a"] < 2 and 0 < m["cycle_l1_b"] < 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["fid"] == m["fid"]
    grid = Image.open(m["grid"])
    assert grid.size[1] == 6 * 30 + 2  # six rows: A, A→B, A→B→A, B, B→A, B→A→B
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2  # the real features of both domains, cached


def test_cli_prepares_a_domain_and_train_asks_for_both(tmp_path, capsys):
    args = ["--preset", "cyclegan", "--profile", "tiny"]
    assert main(["prep", *args, "--domain", "b", "--split", "test", "--out", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (manifest["domain"], manifest["domain_class"], manifest["split"]) == ("b", 9, "test")
    capsys.readouterr()
    assert main(["train", *args, "--data", str(tmp_path / "b"), "--out", str(tmp_path / "run")]) == 2
    assert "--data DOMAIN_A_DIR --data-b DOMAIN_B_DIR" in capsys.readouterr().err


def test_cli_trains_with_mlflow_and_evaluates_a_run_on_both_held_out_domains(domains, tmp_path, capsys, monkeypatch):
    """`ganforge train --preset cyclegan … --mlflow` then `ganforge evaluate --run RUN --data A --data-b B`: both
    directions scored, metrics.json and the grid in the run directory, the scores and the grid in the run's
    MLflow run. A cyclegan run without --data-b, and --data-b with another preset's run, are one line each."""
    from mlflow import MlflowClient

    from ganforge.platform import tracking

    monkeypatch.setenv("GANFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = ["--preset", "cyclegan", "--profile", "tiny"]
    data = ["--data", str(domains["a", "train"][1]), "--data-b", str(domains["b", "train"][1])]
    assert main(["train", *args, *data, "--out", str(run), "--mlflow"]) == 0
    held_out = ["--data", str(domains["a", "test"][1]), "--data-b", str(domains["b", "test"][1])]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), *held_out, "--n", "8"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["fid"] == pytest.approx((m["fid_a2b"] + m["fid_b2a"]) / 2) and m["n_a"] == m["n_b"] == 8
    assert (
        m["step"] == read_checkpoint(run / "checkpoint.pt")["step"] == build_config("cyclegan", "tiny").train.max_steps
    )
    assert json.loads((run / "metrics.json").read_text())["fid"] == m["fid"]
    assert is_metrics_json(json.loads((run / "metrics.json").read_text()))  # a later `evaluate --out` may replace it
    assert Image.open(run / "translations.png").size[1] == 6 * 30 + 2

    client = MlflowClient(tracking.resolve_tracking_uri(str(tmp_path / "home")))
    mlflow_run = client.get_run(m["mlflow_run_id"])
    assert (run / "mlflow_run_id").read_text().strip() == m["mlflow_run_id"]
    assert mlflow_run.data.metrics["fid"] == pytest.approx(m["fid"]) and "loss_g" in mlflow_run.data.metrics
    assert mlflow_run.info.status == "FINISHED"  # closed when training ended; evaluate still logged into it
    assert [a.path for a in client.list_artifacts(m["mlflow_run_id"], "evaluation")] == ["evaluation/translations.png"]

    assert main(["evaluate", "--run", str(run), "--data", str(domains["a", "test"][1])]) == 2
    assert "--data A_TEST_DIR --data-b B_TEST_DIR" in capsys.readouterr().err
    dcgan = tmp_path / "dcgan"
    assert main(["train", "--preset", "dcgan", "--profile", "tiny", "--set", "train.max_steps=1", "--data",
                 str(domains["a", "train"][1]), "--out", str(dcgan)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", "--run", str(dcgan), *held_out]) == 2
    assert "--data-b goes with a cyclegan run" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "nowhere"), *held_out]) == 2
    assert f"no checkpoint at {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_fid_curve_scores_each_snapshot_as_the_final_evaluation_scores_the_model(domains, tmp_path, capsys):
    """A cyclegan run with snapshots gets the FID curve every family gets: `evaluate --run` adds one point per
    snapshot (mean FID of both directions, as the final ``fid``), the last one free from the final evaluation's
    first ``curve_samples`` translations; `ganforge curve --run … --data-b` scores each snapshot afresh and
    finds the same points, and at the final evaluation's sizes its last point is the final ``fid``."""
    from ganforge.curve import read_curve

    run = tmp_path / "run"
    sets = [
        "train.batch_size=32",
        "train.epochs=2",
        "train.snapshot_every=1",
        "eval.curve_samples=8",
    ]  # 2 steps an epoch
    data = ["--data", str(domains["a", "train"][1]), "--data-b", str(domains["b", "train"][1])]
    argv = ["train", "--preset", "cyclegan", "--profile", "tiny", *data, "--out", str(run)]
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    assert [e for e, _ in list_snapshots(run)] == [1, 2]
    held_out = ["--data", str(domains["a", "test"][1]), "--data-b", str(domains["b", "test"][1])]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), *held_out, "--n", "16"]) == 0
    final = json.loads(capsys.readouterr().out)
    rows = read_curve(run / "fid_curve.csv")
    assert final["curve_points"] == 2 and [(r["epoch"], r["n"], r["n_real"]) for r in rows] == [(1, 8, 16), (2, 8, 16)]
    assert rows[-1]["seconds"] == 0.0 and rows[0]["seconds"] > 0  # the last point came from the final samples
    assert (run / "fid_curve.png").is_file()

    again = tmp_path / "again"
    shutil.copytree(run, again)
    (again / "fid_curve.csv").unlink()
    assert main(["curve", "--run", str(again), *held_out, "--n", "8", "--n-real", "16"]) == 0
    scored = read_curve(again / "fid_curve.csv")
    assert [r["fid"] for r in scored] == pytest.approx([r["fid"] for r in rows], rel=1e-5)
    (again / "fid_curve.csv").unlink()
    assert main(["curve", "--run", str(again), *held_out, "--n", "16", "--n-real", "16"]) == 0
    assert read_curve(again / "fid_curve.csv")[-1]["fid"] == pytest.approx(final["fid"], rel=1e-5)
    assert scored[0]["fid"] != scored[1]["fid"]  # two snapshots, two models
    capsys.readouterr()
    assert main(["curve", "--run", str(again), "--data", str(domains["a", "test"][1])]) == 2
    assert "--data A_TEST_DIR --data-b B_TEST_DIR" in capsys.readouterr().err
