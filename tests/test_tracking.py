"""MLflow tracking against real stores: sqlite under GANFORGE_HOME and an `mlflow server` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from ganforge.config import build_config
from ganforge.platform import tracking
from servers import shared_mlflow_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

METRICS_WRITER = textwrap.dedent("""
    import sys
    from ganforge.platform import tracking
    cb = tracking.MlflowMetricsCallback(sys.argv[1])
    for step in range(0, 50, 10):
        cb(step, {"loss_d": 1.0 + step, "loss_g": 2.0 + step})
    cb.flush()
""")

ARTIFACT_WRITER = textwrap.dedent("""
    import sys
    from ganforge.platform import tracking
    run_id, sample_file, grid_dir = sys.argv[1:4]
    tracking.log_artifact(run_id, sample_file, "samples")
    tracking.log_artifacts(run_id, grid_dir, "grids")
    tracking.log_metrics(run_id, {"fid": 41.5, "kid_mean": 0.02}, step=49)
""")


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ganforge-home")


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, sqlite_home, monkeypatch) -> str:
    """Point this process (and subprocesses, through the env) at one real store."""
    if request.param == "sqlite":
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("GANFORGE_HOME", str(sqlite_home))
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_server())
    return tracking.configure()


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, f"subprocess failed:\n{out}\n{err[-3000:]}"


def test_resolve_tracking_uri_env_wins_else_absolute_sqlite(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GANFORGE_HOME", raising=False)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/.ganforge/mlflow.db"
    assert tracking.resolve_tracking_uri("rel/home") == f"sqlite:///{tmp_path.resolve()}/rel/home/mlflow.db"
    monkeypatch.setenv("GANFORGE_HOME", "other")
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/other/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.resolve_tracking_uri("ignored") == "http://mlflow.example:5000"


def test_param_values_are_bounded_strings():
    assert tracking.param_value(None) == "None"
    assert tracking.param_value(0.0002) == "0.0002"
    assert tracking.param_value(["a", 1]) == '["a", 1]'
    assert len(tracking.param_value("x" * 7000)) == tracking.MAX_PARAM_VALUE_CHARS


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(tracking.TrackingError, match="'loss_d'.*not a number"):
        tracking.metric_entities({"loss_d": "high"}, step=0, timestamp_ms=0)
    with pytest.raises(tracking.TrackingError, match="no such file"):
        tracking.log_artifact("any-run", str(tmp_path / "missing.png"))
    with pytest.raises(tracking.TrackingError, match="no such directory"):
        tracking.log_artifacts("any-run", str(tmp_path / "missing"), "grids")


def test_plot_curves_without_quality_metrics_still_writes_png(tmp_path):
    png = tracking.plot_curves(
        {"loss_d": [(0, 1.0), (10, 0.5)], "loss_g": [(0, 2.0), (10, 1.0)]}, tmp_path / "curves.png"
    )
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary left behind


def test_pipeline_run_records_steps_from_separate_processes(store, tmp_path):
    cfg = build_config("dcgan", "tiny", {"train": {"max_steps": None}})
    run_id = tracking.start_pipeline_run(cfg, tags={"ganforge.trigger": "test", "kfp_run_id": "kfp-run-123"})

    sample = tmp_path / "sample.txt"
    sample.write_text("a sample")
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "step_000010.txt").write_text("grid")
    # Two step processes write into the same run at the same time, as KFP tasks would.
    writers = [run_python(METRICS_WRITER, run_id), run_python(ARTIFACT_WRITER, run_id, str(sample), str(grids))]
    for process in writers:
        finish(process)

    c = MlflowClient()
    run = c.get_run(run_id)
    assert run.data.params == {k: tracking.param_value(v) for k, v in cfg.flat().items()}
    assert run.data.params["train.max_steps"] == "None"
    assert run.data.tags[tracking.CONFIG_HASH_TAG] == cfg.config_hash()
    assert run.data.tags[tracking.GIT_COMMIT_TAG]
    assert run.data.tags[tracking.KFP_RUN_ID_TAG] == "kfp-run-123"
    assert run.data.tags["ganforge.trigger"] == "test"
    assert c.get_experiment(run.info.experiment_id).name == "dcgan"
    if store.startswith("sqlite:"):
        home = Path(os.environ["GANFORGE_HOME"]).resolve()
        assert run.info.artifact_uri.startswith((home / "mlartifacts" / "dcgan").as_uri())

    config_json = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="config.json", dst_path=str(tmp_path / "dl")
    )
    assert json.loads(Path(config_json).read_text()) == cfg.to_dict()

    histories = tracking.metric_histories(run_id)
    assert histories["loss_d"] == [(s, 1.0 + s) for s in range(0, 50, 10)]
    assert histories["loss_g"] == [(s, 2.0 + s) for s in range(0, 50, 10)]
    assert histories["fid"] == [(49, 41.5)]

    png = tracking.log_curves(run_id, str(tmp_path / "my-curves.png"))
    assert png.read_bytes().startswith(PNG_MAGIC)
    artifacts = {a.path for a in c.list_artifacts(run_id)} | {
        a.path for d in ("samples", "grids", "plots") for a in c.list_artifacts(run_id, d)
    }
    assert {"config.json", "samples/sample.txt", "grids/step_000010.txt", "plots/curves.png"} <= artifacts

    assert c.get_run(run_id).info.status == "RUNNING" and c.get_run(run_id).data.metrics["fid"] == 41.5
    tracking.finish_pipeline_run(run_id)
    assert c.get_run(run_id).info.status == "FINISHED"


def test_metrics_callback_buffers_until_the_interval_or_flush(store):
    run_id = tracking.start_pipeline_run(build_config("gan", "tiny"))
    cb = tracking.MlflowMetricsCallback(run_id, flush_interval_s=3600)
    cb(0, {"loss_d": 1.0})
    cb(10, {"loss_d": 0.5})
    assert tracking.metric_histories(run_id)["loss_d"] == [(0, 1.0)]  # the first point at once
    cb.flush()
    assert tracking.metric_histories(run_id)["loss_d"] == [(0, 1.0), (10, 0.5)]
    eager = tracking.MlflowMetricsCallback(run_id, flush_interval_s=0)
    eager(20, {"loss_d": 0.25})
    assert tracking.metric_histories(run_id)["loss_d"][-1] == (20, 0.25)


FIRST_USER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ganforge.platform import tracking
    go = Path(sys.argv[1])
    Path(sys.argv[1] + "-" + sys.argv[2]).touch()  # imported
    while not go.exists():  # and waiting: all start together
        time.sleep(0.01)
    tracking.configure()
    tracking.client().create_experiment(sys.argv[2])
""")


def test_processes_that_first_use_a_fresh_sqlite_store_together_all_succeed(tmp_path):
    """Two seeds started at once in a new GANFORGE_HOME: MLflow's schema migrations must not race
    (unlocked, all but one of 3–4 such processes failed with alembic's "expected to match one row")."""
    home, go = tmp_path / "home", tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"GANFORGE_HOME": str(home)}
    children = [
        subprocess.Popen([sys.executable, "-c", FIRST_USER, str(go), f"exp{i}"], env=env, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"go-exp{i}").exists() for i in range(3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()
        errors = [child.communicate(timeout=120)[1].decode()[-400:] for child in children]
    finally:
        for child in children:
            child.kill()
    assert [child.returncode for child in children] == [0] * 3, errors
    names = {e.name for e in MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()}
    assert {f"exp{i}" for i in range(3)} <= names
