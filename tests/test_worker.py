"""The training worker (``python -m ganforge.platform.worker``): what torchrun ranks and cluster pods of a
pipeline run start, joining the run's MLflow run; the ``ganforge`` command line no longer does that."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli_env
from ganforge.checkpoint import read_checkpoint
from ganforge.config import build_config
from ganforge.platform import steps, tracking
from ganforge.platform.cluster_jobs import spec_from_config
from ganforge.platform.settings import WORKER_MODULE


def test_torchrun_ranks_of_the_train_step_log_into_the_pipeline_run(
    ganforge_home, fashion_train, tmp_path, monkeypatch
):
    for key, value in cli_env(GANFORGE_HOME=str(ganforge_home)).items():
        monkeypatch.setenv(key, value)
    tracking.configure()
    cfg = build_config("dcgan", "tiny", {"train": {"nproc": 2, "max_steps": 4}})
    run_id = steps.start_run_step(cfg.name, cfg.profile, {"nproc": 2})["run_id"]
    result = steps.train_step(cfg.to_json(), str(fashion_train), str(tmp_path / "model"), run_id)
    assert result["step"] == 4 == read_checkpoint(tmp_path / "model" / "checkpoint.pt")["step"]
    history = tracking.client().get_metric_history(run_id, "loss_g")
    assert history and max(m.step for m in history) <= 4
    assert tracking.client().get_run(run_id).data.tags["ganforge.step.train"] == "done"


def test_a_missing_config_json_is_one_line_naming_the_fix(tmp_path):
    cmd = [sys.executable, "-m", WORKER_MODULE, "train", "--config-json", str(tmp_path / "nope.json")]
    done = subprocess.run(
        [*cmd, "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--config-json" in line and "nope.json" in line and "start-run" in line


def test_cluster_pods_start_the_worker():
    cfg = build_config("dcgan", "tiny")
    spec = spec_from_config(cfg, image="img", namespace="ns", data_uri="s3://b/d", out_uri="s3://b/o")
    script = spec.command[-1]
    assert f"-m {WORKER_MODULE} train --config-json" in script


def test_the_command_line_does_not_join_a_pipeline_run():
    """Only the worker reads GANFORGE_MLFLOW_RUN_ID: ``ganforge train --mlflow`` opens its own run."""
    from pathlib import Path

    import ganforge.cli

    modules = sorted(Path(ganforge.cli.__file__).parent.glob("cli*.py"))  # the entry and its command modules
    assert {"cli.py", "cli_train.py"} <= {m.name for m in modules}
    assert not [m.name for m in modules if "MLFLOW_RUN_ID" in m.read_text()]


def test_the_worker_refuses_a_translation_preset(tmp_path):
    from ganforge.config import ConfigError
    from ganforge.platform import worker

    with pytest.raises(ConfigError, match="cyclegan trains in its pipeline step"):
        worker.train(build_config("cyclegan", "tiny"), str(tmp_path), str(tmp_path / "o"), False, "")
