"""How a pipeline's MLflow run ends, and where its logged model goes (real sqlite MLflow).

The DAG-level proof (a real kfp.local run that fails in prep-test, and one that succeeds) is in
test_pipeline_local.py; these tests pin the pieces the DAG's steps and exit task call.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch

from ganforge.config import build_config
from ganforge.platform import registry, steps, tracking


@pytest.fixture
def store(ganforge_home) -> str:
    return tracking.configure()


def _pipeline_run(kfp_run: str = "") -> str:
    cfg = build_config("dcgan", "tiny")
    return steps.start_run_step(cfg.name, cfg.profile, kfp_run=kfp_run)["run_id"]


def _run(run_id: str):
    return tracking.client().get_run(run_id)


def test_tracked_step_records_done_or_failed_with_the_step_and_error(store):
    run_id = _pipeline_run()
    with tracking.tracked_step(run_id, "prep-train"):
        assert _run(run_id).data.tags["ganforge.step.prep-train"] == "running"
    with pytest.raises(ValueError, match="bad magic"):
        with tracking.tracked_step(run_id, "train"):
            raise ValueError("bad magic number 2049\nsecond line")
    tags = _run(run_id).data.tags
    assert tags["ganforge.step.prep-train"] == "done" and tags["ganforge.step.train"] == "failed"
    assert tags["ganforge.failed_step"] == "train"
    assert tags["ganforge.error"] == "ValueError: bad magic number 2049"
    assert _run(run_id).info.status == "RUNNING"  # a failed attempt may be retried: the exit task decides

    with tracking.tracked_step(run_id, "train"):  # KFP's retry of the step succeeds
        pass
    tags = _run(run_id).data.tags
    assert tags["ganforge.step.train"] == "done" and "ganforge.failed_step" not in tags and "ganforge.error" not in tags


def test_steps_record_themselves_by_their_task_name(store, tmp_path):
    """A real step failing: prep on a directory without IDX files."""
    from ganforge.data import DataError

    run_id = _pipeline_run()
    cfg = build_config("dcgan", "tiny", {"data": {"source": str(tmp_path)}})
    with pytest.raises(DataError):
        steps.prep_step(cfg.to_json(), "test", str(tmp_path / "out"), run_id)
    tags = _run(run_id).data.tags
    assert tags["ganforge.failed_step"] == "prep-test" and tags["ganforge.step.prep-test"] == "failed"
    assert tags["ganforge.step.start-run"] == "done"


def test_exit_task_finds_the_run_by_kfp_run_and_ends_it(store):
    ok, failed, killed, cancelled = (_pipeline_run(f"ganforge-dcgan-{uuid.uuid4().hex}") for _ in range(4))
    kfp_run = {r: _run(r).data.tags[tracking.KFP_RUN_ID_TAG] for r in (ok, failed, killed, cancelled)}
    assert tracking.find_pipeline_run("dcgan", kfp_run[ok]) == ok
    assert tracking.find_pipeline_run("dcgan", "no-such-kfp-run") is None
    assert tracking.find_pipeline_run("no-such-experiment", kfp_run[ok]) is None

    with pytest.raises(RuntimeError):
        with tracking.tracked_step(failed, "evaluate"):
            raise RuntimeError("out of memory")
    tracking.client().set_tag(killed, "ganforge.step.train", "running")  # OOM-killed: no exception recorded

    assert steps.end_run_step("dcgan", kfp_run[ok], "SUCCEEDED") == {"run_id": ok, "status": "FINISHED", "version": 0}
    assert steps.end_run_step("dcgan", kfp_run[failed], "FAILED")["status"] == "FAILED"
    assert steps.end_run_step("dcgan", kfp_run[killed], "FAILED")["status"] == "FAILED"
    assert steps.end_run_step("dcgan", kfp_run[cancelled], "CANCELLED")["status"] == "KILLED"
    assert steps.end_run_step("dcgan", "no-such-kfp-run", "FAILED") == {"run_id": "", "status": "", "version": 0}

    for run_id, status, failed_step in (
        (ok, "FINISHED", None),
        (failed, "FAILED", "evaluate"),
        (killed, "FAILED", "train"),
        (cancelled, "KILLED", "unknown"),
    ):
        run = _run(run_id)
        assert run.info.status == status and run.info.end_time >= run.info.start_time, run_id
        assert run.data.tags.get("ganforge.failed_step") == failed_step, run_id


def test_register_step_finishes_the_run(store, fashion_train, tmp_path):
    """register is the DAG's last step: the run is FINISHED the moment its model is registered."""
    import json

    from ganforge.train import train

    cfg = build_config("dcgan", "tiny", {"train": {"max_steps": 2}})
    run_id = tracking.start_pipeline_run(cfg)
    train(cfg, fashion_train, tmp_path / "run")
    out = steps.register_step(cfg.to_json(), str(tmp_path / "run"), json.dumps({"fid": 100.0}), run_id)
    run = _run(run_id)
    assert out["version"] == 1 and run.info.status == "FINISHED" and run.info.end_time
    assert run.data.tags["ganforge.step.register"] == "done"


def test_logged_model_goes_to_the_runs_experiment_not_the_working_directory(
    store, ganforge_home, tmp_path, monkeypatch
):
    """MLflow puts a LoggedModel in the *active* experiment; without care that is "Default", whose
    artifact root on sqlite is ./mlruns in the current directory."""
    from mlflow.tracking import fluent

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    active_before = (fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID"))
    cfg = build_config("dcgan", "tiny", {"model": {"nz": 4}, "registry": {"model_name": f"g-{uuid.uuid4().hex[:8]}"}})
    run_id = tracking.start_pipeline_run(cfg)
    generator = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 4, 4)))
    registry.register_generator(run_id, generator, cfg, {"fid": 10.0}, tags={})

    assert list(cwd.iterdir()) == [], "nothing may be written to the working directory"
    c = tracking.client()
    experiment_id = _run(run_id).info.experiment_id
    (logged,) = c.search_logged_models(experiment_ids=[experiment_id])
    assert logged.source_run_id == run_id and c.get_experiment(experiment_id).name == "dcgan"
    root = Path(os.environ["GANFORGE_HOME"]).resolve() / "mlartifacts" / "dcgan"
    assert logged.artifact_location.startswith(root.as_uri())
    assert (root / "models" / logged.model_id / "artifacts" / "MLmodel").is_file()
    assert c.search_logged_models(experiment_ids=["0"]) == []
    assert (fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID")) == active_before  # restored


def test_a_step_error_is_not_hidden_when_mlflow_cannot_record_it(store, capsys):
    run_id = _pipeline_run()
    with pytest.raises(ValueError, match="the step's own error"):
        with tracking.tracked_step(run_id, "train"):
            tracking.client().delete_run(run_id)  # MLflow now refuses every tag on this run
            raise ValueError("the step's own error")
    assert "could not record the failure of step 'train'" in capsys.readouterr().err
