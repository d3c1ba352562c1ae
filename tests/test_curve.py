"""Snapshots during training, the FID curve over them, and `ganforge evaluate --run`."""

import json

import pytest
import torch

from ganforge import cli, curve
from ganforge.checkpoint import list_snapshots, load_generator, read_checkpoint
from ganforge.config import PRESETS, build_config
from ganforge.curve import evaluate_run
from ganforge.evaluate import is_metrics_json
from ganforge.train import train

EVAL = {"n_samples": 12, "curve_samples": 6, "kid_subset_size": 6, "kid_subsets": 5}


def snap_config(**train):
    # 512 tiny images, batch 32: 16 steps an epoch; 3 epochs with a snapshot each
    return build_config(
        "sngan",
        "tiny",
        {"train": {"max_steps": None, "epochs": 3, "snapshot_every": 1, "checkpoint_every": 16, **train}, "eval": EVAL},
    )


@pytest.fixture(scope="module")
def snap_run(fashion_train, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("snap") / "run"
    result = train(snap_config(), fashion_train, out)
    return out, result


def test_sngan_is_spectral_hinge_ttur_and_the_seeds_stay_faithful():
    sn = build_config("sngan", "quality")
    assert (sn.model.d_norm, sn.train.loss) == ("spectral", "hinge")
    assert sn.train.lr_d == 2 * sn.train.lr_g and sn.train.snapshot_every > 0 and sn.eval.n_samples == 10000
    for seed in ("gan", "dcgan"):
        cfg = build_config(seed, "quality")
        assert (cfg.train.loss, cfg.train.lr_g, cfg.train.lr_d, cfg.train.beta1) == ("bce", 2e-4, 2e-4, 0.5)
        assert cfg.model.d_norm == "batch" and cfg.train.diffaugment == "" and cfg.train.r1_gamma == 0
    assert "sngan" in PRESETS


def test_snapshots_hold_the_ema_generator_of_each_epoch(snap_run):
    out, result = snap_run
    snaps = list_snapshots(out)
    assert [e for e, _ in snaps] == [1, 2, 3]
    assert [read_checkpoint(p)["step"] for _, p in snaps] == [16, 32, 48]
    final = read_checkpoint(out / "checkpoint.pt")
    last = read_checkpoint(snaps[-1][1])
    assert all(torch.equal(final["G_ema"][k], v) for k, v in last["G_ema"].items())
    G, cfg = load_generator(snaps[0][1])
    assert cfg.name == "sngan" and not G.training
    assert not torch.equal(read_checkpoint(snaps[0][1])["G_ema"]["net.0.weight"], last["G_ema"]["net.0.weight"])
    assert result.total_seconds == pytest.approx(result.seconds)


def test_train_seconds_add_up_over_a_resume(fashion_train, tmp_path):
    torch.set_num_threads(1)
    cfg = snap_config(epochs=1, max_steps=8, snapshot_every=0, checkpoint_every=4)
    first = train(cfg, fashion_train, tmp_path)
    at_checkpoint = read_checkpoint(tmp_path / "checkpoint.pt")["train_seconds"]
    assert 0 < at_checkpoint <= first.total_seconds
    second = train(
        build_config("sngan", "tiny", {"train": {"max_steps": 12, "checkpoint_every": 4, "snapshot_every": 0}}),
        fashion_train,
        tmp_path,
        resume=True,
    )
    assert second.step == 12 and not (tmp_path / "snapshots").exists()
    assert second.total_seconds == pytest.approx(at_checkpoint + second.seconds, rel=1e-9)
    assert at_checkpoint < read_checkpoint(tmp_path / "checkpoint.pt")["train_seconds"] <= second.total_seconds


def test_evaluate_run_scores_the_final_model_and_every_snapshot(snap_run, fashion_test, tmp_path, torchscript):
    out, _ = snap_run
    metrics, rows = evaluate_run(out, fashion_test, tmp_path / "eval", cache=tmp_path / "cache")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [16, 32, 48]
    assert all(r["n"] == 6 and r["n_real"] == 12 for r in rows)
    assert metrics["n"] == 12 and metrics["curve_points"] == 3 and metrics["step"] == 48
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["fid"] == metrics["fid"]
    assert is_metrics_json(saved)  # so a later `evaluate --out` may replace it (and only such a file)
    assert curve.read_curve(tmp_path / "eval" / curve.CURVE_CSV) == rows
    assert (tmp_path / "eval" / curve.CURVE_PNG).read_bytes()[:4] == b"\x89PNG"
    # The last point came from the final evaluation's first 6 samples; scoring the last
    # snapshot on its own draws the same latents and must agree.
    alone = curve.curve_point(list_snapshots(out)[-1][1], fashion_test, 6, 12, tmp_path / "cache")
    assert rows[-1]["seconds"] == 0.0
    assert alone["fid"] == pytest.approx(rows[-1]["fid"], rel=1e-6)
    assert alone["kid_mean"] == pytest.approx(rows[-1]["kid_mean"], rel=1e-6, abs=1e-9)


def test_no_curve_scores_only_the_final_model_and_the_curve_fills_in_later(
    snap_run, fashion_test, tmp_path, torchscript
):
    out, _ = snap_run
    metrics, rows = evaluate_run(out, fashion_test, tmp_path / "eval", cache=tmp_path / "cache", curve=False)
    # only the free point from the final evaluation's samples; no snapshot was scored
    assert [(r["epoch"], r["seconds"]) for r in rows] == [(3, 0.0)] and metrics["curve_points"] == 1
    csv = tmp_path / "eval" / curve.CURVE_CSV
    assert curve.read_curve(csv) == rows
    computed = []
    later = curve.fid_curve(out, fashion_test, cache=tmp_path / "cache", out=csv, on_point=computed.append)
    assert [r["epoch"] for r in computed] == [1, 2] and later[-1] == rows[0]


def test_the_curve_resumes_and_skips_points_it_has(snap_run, fashion_test, tmp_path, torchscript):
    out, _ = snap_run
    csv = tmp_path / "curve.csv"
    fake = {"epoch": 1, "step": 16, "n": 6, "n_real": 12, "fid": 123.0, "kid_mean": 0.1, "kid_std": 0.0, "seconds": 1.0}
    curve.write_curve(csv, [fake])
    computed = []
    rows = curve.fid_curve(
        out, fashion_test, n=6, n_real=12, cache=tmp_path / "cache", out=csv, on_point=computed.append
    )
    assert [r["epoch"] for r in computed] == [2, 3]  # epoch 1 was already in the CSV
    assert rows[0] == fake and len(rows) == 3
    assert curve.fid_curve(out, fashion_test, n=6, n_real=12, cache=tmp_path / "cache", out=csv) == rows
    # a point measured at another n does not count as done
    again = []
    curve.fid_curve(
        out, fashion_test, n=4, n_real=12, cache=tmp_path / "cache", out=tmp_path / "c4.csv", on_point=again.append
    )
    assert [r["epoch"] for r in again] == [1, 2, 3]
    upto = []
    rows = curve.fid_curve(
        out,
        fashion_test,
        n=5,
        n_real=12,
        cache=tmp_path / "cache",
        out=tmp_path / "c5.csv",
        max_epoch=2,
        follow=True,
        on_point=upto.append,
    )
    assert [r["epoch"] for r in upto] == [1, 2] == [r["epoch"] for r in rows]  # followed, stopped at max_epoch


def test_bad_curve_inputs_say_what_to_do(tmp_path, fashion_test, fashion_train):
    with pytest.raises(curve.CurveError, match="no config.json"):
        curve.fid_curve(tmp_path, fashion_test)
    (tmp_path / "config.json").write_text(build_config("sngan", "tiny").to_json())
    with pytest.raises(curve.CurveError, match="train.snapshot_every"):
        curve.fid_curve(tmp_path, fashion_test)
    with pytest.raises(curve.CurveError, match="follow needs the training dataset directory"):
        curve.fid_curve(tmp_path, fashion_test, follow=True)
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    with pytest.raises(curve.CurveError, match="not a ganforge FID curve"):
        curve.read_curve(tmp_path / "foreign.csv")


def test_cli_mlflow_run_survives_resume_and_gets_the_curve(
    fashion_train, fashion_test, tmp_path, ganforge_home, torchscript, monkeypatch, capsys
):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    common = [
        "train",
        "--preset",
        "sngan",
        "--profile",
        "tiny",
        "--data",
        str(fashion_train),
        "--out",
        str(out),
        "--mlflow",
        "--set",
        "train.snapshot_every=1",
        "--set",
        "train.checkpoint_every=8",
        "--set",
        f"eval.n_samples={EVAL['n_samples']}",
        "--set",
        f"eval.curve_samples={EVAL['curve_samples']}",
        "--set",
        f"eval.kid_subset_size={EVAL['kid_subset_size']}",
    ]
    assert cli.main(common + ["--set", "train.max_steps=8"]) == 0
    run_id = (out / cli.MLFLOW_RUN_FILE).read_text().strip()
    assert cli.main(common + ["--set", "train.max_steps=20", "--set", "train.epochs=2", "--resume"]) == 0
    assert (out / cli.MLFLOW_RUN_FILE).read_text().strip() == run_id
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", str(out), "--data", str(fashion_test)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mlflow_run_id"] == run_id and printed["curve_points"] == 2

    from ganforge.platform import tracking

    tracking.configure()
    c = tracking.client()
    assert sorted(a.path for a in c.list_artifacts(run_id, "fid_curve")) == [
        "fid_curve/fid_curve.csv",
        "fid_curve/fid_curve.png",
    ]
    history = [(m.step, m.value) for m in c.get_metric_history(run_id, "fid_n6")]
    assert [s for s, _ in history] == [16, 20]
    assert c.get_run(run_id).data.metrics["fid"] == printed["fid"]
    # `ganforge curve` on the evaluated run recomputes nothing and logs no duplicate points
    assert cli.main(["curve", "--run", str(out), "--data", str(fashion_test)]) == 0
    assert json.loads(capsys.readouterr().out)["mlflow_run_id"] == run_id
    assert c.get_run(run_id).info.status == "FINISHED"  # closed by train; evaluate and curve log into it anyway
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "fid_n6")] == history
    assert c.get_metric_history(run_id, "train_wall_s")[-1].step == 20
    loss_steps = [m.step for m in c.get_metric_history(run_id, "loss_d")]
    assert loss_steps[0] < 8 < loss_steps[-1]  # one run's curve spans both invocations


def test_checkpoint_scores_at_any_real_n_and_the_raw_generator_on_request(
    snap_run, fashion_test, tmp_path, torchscript, capsys
):
    from ganforge.evaluate import EvaluationError, evaluate_checkpoint

    out, _ = snap_run
    cache = tmp_path / "cache"
    last_snapshot = list_snapshots(out)[-1][1]  # the EMA generator at the final step
    point = curve.curve_point(last_snapshot, fashion_test, 6, 12, cache)
    ema = evaluate_checkpoint(out / "checkpoint.pt", fashion_test, n=6, n_real=12, cache=cache)
    assert (ema["n"], ema["n_real"], ema["generator"]) == (6, 12, "ema")
    assert ema["fid"] == pytest.approx(point["fid"], rel=1e-9)  # same generator, latents and reference
    raw = evaluate_checkpoint(out / "checkpoint.pt", fashion_test, n=6, n_real=12, cache=cache, ema=False)
    assert raw["generator"] == "raw" and raw["fid"] != pytest.approx(ema["fid"], rel=1e-3)
    with pytest.raises(EvaluationError, match="only the EMA generator"):
        evaluate_checkpoint(last_snapshot, fashion_test, n=6, cache=cache, ema=False)
    assert cli.main(["evaluate", "--run", str(out), "--data", str(fashion_test), "--raw-generator"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_evaluate_needs_exactly_one_of_checkpoint_and_run(tmp_path, capsys):
    assert cli.main(["evaluate", "--data", str(tmp_path)]) == 2
    assert "either --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("nz", [100, 7, 1])
def test_eval_latents_prefix_property_and_compatibility(nz):
    from ganforge.evaluate import eval_latents

    full = eval_latents(37, nz)
    for m in (1, 5, 6, 16, 17, 36):
        assert torch.equal(eval_latents(m, nz), full[:m])
    if 32 * nz % 16 == 0:  # where one randn call has no ragged tail, the draw is unchanged
        assert torch.equal(eval_latents(32, nz), torch.randn(32, nz, generator=torch.Generator().manual_seed(12345)))
