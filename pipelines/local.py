"""Run a pipeline on this machine: kfp.local's SubprocessRunner, sqlite MLflow, a local artifact dir.

State lives under GANFORGE_HOME (default ./.ganforge): mlflow.db (tracking + registry),
mlartifacts/ (MLflow artifacts) and pipeline-root/ (KFP task outputs). MLFLOW_TRACKING_URI,
when set, points the same run at a real MLflow server instead.
"""
from __future__ import annotations

import os
from pathlib import Path

from kfp import local

from ganforge import paths, tracking

from .factory import build_pipeline


def run_local(name: str, profile: str = "local", **params) -> dict:
    """Run pipeline ``name`` end to end here; returns a summary (run id, metrics, version, alias, paths)."""
    home = paths.home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["GANFORGE_HOME"] = str(home)  # the task subprocesses inherit it
    os.environ["MLFLOW_TRACKING_URI"] = tracking.resolve_tracking_uri(str(home))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(home / "pipeline-root"),
               raise_on_error=True)
    pipeline = build_pipeline(name, profile)
    task = pipeline(profile=profile, **{k: v for k, v in params.items() if v is not None})
    version = int(task.output)
    return summarize(name, profile, version)


def summarize(name: str, profile: str, version: int) -> dict:
    """What a user looks at after a run, read back from the MLflow registry and run."""
    from mlflow import MlflowClient

    from ganforge.config import build_config

    tracking.configure()
    client = MlflowClient()
    mv = client.get_model_version(build_config(name, profile).model_name, str(version))
    run = client.get_run(mv.run_id)
    aliases = list(mv.aliases)
    return {
        "pipeline": name,
        "mlflow_run_id": mv.run_id,
        "tracking_uri": tracking.resolve_tracking_uri(),
        "model": f"models:/{mv.name}/{mv.version}",
        "aliases": aliases,
        "fid": run.data.metrics.get("fid"),
        "kid_mean": run.data.metrics.get("kid_mean"),
        "inception_score": run.data.metrics.get("inception_score"),
        "sample_grid": _last_sample_grid(run.info.artifact_uri),
        "mlflow_ui": f"mlflow ui --backend-store-uri {tracking.resolve_tracking_uri()} --port 5000",
    }


def _last_sample_grid(artifact_uri: str) -> str:
    """The newest sample grid: a local file path for a local artifact store, else its URI."""
    if artifact_uri.startswith("file://"):
        grids = sorted(Path(artifact_uri[len("file://"):], "samples").glob("*.png"))
        if grids:
            return str(grids[-1])
    return f"{artifact_uri}/samples/"


def print_summary(summary: dict, file=None) -> None:
    print("\n== ganforge run finished ==", file=file)
    for key, value in summary.items():
        if value is not None:
            print(f"{key:>22}: {value}", file=file)
