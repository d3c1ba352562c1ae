"""Run a pipeline on this machine through kfp.local, with one of two runners.

``subprocess`` (the default): every task is a subprocess of this venv; tracking in sqlite.
State lives under GANFORGE_HOME (default ./.ganforge): mlflow.db (tracking + registry),
mlartifacts/ (MLflow artifacts) and pipeline-root/ (KFP task outputs). MLFLOW_TRACKING_URI,
when set, points the same run at a real MLflow server instead.

``docker``: every task runs in its own container of ``localhost/ganforge-cpu:dev`` (kfp.local's
DockerRunner, the image's non-root user), tracking in the local stack (``pipelines.stack``: the
mlflow-server image on PostgreSQL with artifacts in an S3 server process) — the cluster's
arrangement on one machine. The images must be built from this checkout (``make images-local``);
a stale one is refused. Task outputs go to GANFORGE_HOME/pipeline-root-docker/.
"""

from __future__ import annotations

import os
from pathlib import Path

from kfp import local

from ganforge import paths
from ganforge.config import ConfigError, PipelineConfig, build_config
from ganforge.errors import GanforgeError
from ganforge.platform import tracking
from ganforge.platform.steps import settle_config
from ganforge.progress import progress_enabled

from . import console
from .factory import build_pipeline
from .kube import ClusterSettings

RUNNERS = ("subprocess", "docker")
IMAGE_UID = 1000  # the images' non-root user (images/Dockerfile)
# What a task container gets from this environment: nothing else (no credentials, no host paths).
CONTAINER_ENV_PASSTHROUGH = (
    "OMP_NUM_THREADS",
    "GANFORGE_THREADS",
    "GANFORGE_EVAL_WORKERS",
    "GANFORGE_S3_ATTEMPTS",
    "GANFORGE_S3_BACKOFF_S",
    "GANFORGE_S3_TIMEOUT_S",
    "GANFORGE_DEBUG",
    "GANFORGE_PROGRESS",
)


class PipelineRunError(GanforgeError, RuntimeError):
    """A local pipeline run failed in one of its tasks; the message names the task and its logs."""


def check_runner(runner: str) -> str:
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}: choose one of {', '.join(RUNNERS)} (e.g. RUNNER=docker)")
    return runner


def local_sources(cfg: PipelineConfig) -> list[str]:
    """Host paths a task container must read: the data source when it is a local file or folder."""
    src = cfg.data.source
    return [str(Path(src).resolve())] if src.startswith("/") and Path(src).exists() else []


def docker_runner(home: Path, sources: list[str], client_env: dict[str, str]):
    """kfp.local's DockerRunner on the local cpu image: host network (the stack listens on 127.0.0.1),
    the image's non-root user (or this user's uid when not root), data sources mounted read-only.
    ``client_env``: the stack's ``Stack.env()`` (tracking URI and credentials), which reaches the task
    containers through the Docker API, never a command line."""
    from docker.types import Mount

    from components.image import IMAGE

    from . import docker_local

    if IMAGE != docker_local.CPU_IMAGE:
        raise ConfigError(
            f"the DAG's components were built for image {IMAGE}; the docker runner needs "
            f"GANFORGE_IMAGE={docker_local.CPU_IMAGE} set before the pipeline is imported "
            "(`make run RUNNER=docker` and `python -m pipelines run --runner docker` do it)"
        )
    docker_local.check_fresh(docker_local.CPU_IMAGE)
    root = home / "pipeline-root-docker"
    root.mkdir(parents=True, exist_ok=True)
    env = dict(client_env)
    env.update({k: os.environ[k] for k in CONTAINER_ENV_PASSTHROUGH if k in os.environ})
    args = {}
    if os.geteuid() == 0:
        os.chown(root, IMAGE_UID, IMAGE_UID)  # the tasks (uid 1000) create their output folders here
    else:
        args["user"] = f"{os.getuid()}:{os.getgid()}"
        env["HOME"] = "/tmp"  # the image's home belongs to uid 1000
    mounts = [Mount(target=p, source=p, type="bind", read_only=True) for p in sources]
    return local.DockerRunner(network_mode="host", environment=env, mounts=mounts, **args), root


def run_local(name: str, profile: str = "local", runner: str = "subprocess", **params) -> dict:
    """Run pipeline ``name`` end to end here; returns a summary (run id, metrics, version, alias, paths).

    ``params`` are the pipeline's parameters: the run knobs (``run_knobs.RUN_KNOBS``) and ``overrides``.
    The run's config is settled from them once, here, before anything starts (a bad knob or --set is one
    line): it places the task containers' data mounts and names the registered model for the summary.
    The start-run task settles the same config from the same parameters and passes it to every step."""
    check_runner(runner)
    params = {k: v for k, v in params.items() if v is not None}
    knobs = {k: v for k, v in params.items() if k != "overrides"}
    cfg = settle_config(name, profile, knobs, params.get("overrides", ""))
    home = paths.home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["GANFORGE_HOME"] = str(home)  # the task subprocesses inherit it
    # Tasks write progress bars into their logs, which the console follows for the ETA (pipelines.console).
    progress_enabled()  # a bad GANFORGE_PROGRESS is one line before anything runs
    progress_before = os.environ.get("GANFORGE_PROGRESS")
    os.environ.setdefault("GANFORGE_PROGRESS", "1")
    try:
        return _run_local(cfg, runner, home, params)
    finally:
        if progress_before is None:
            os.environ.pop("GANFORGE_PROGRESS", None)


def _run_local(cfg: PipelineConfig, runner: str, home: Path, params: dict) -> dict:
    name, profile = cfg.name, cfg.profile
    if runner == "docker":
        from . import docker_local, stack

        docker_local.check_fresh(docker_local.CPU_IMAGE)  # before starting anything
        client_env = stack.up(home).env()  # URI and the pipeline user's credentials (basic-auth)
        os.environ.update(client_env)
        task_runner, root = docker_runner(home, local_sources(cfg), client_env)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = tracking.resolve_tracking_uri(str(home))
        task_runner, root = local.SubprocessRunner(use_venv=False), home / "pipeline-root"
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True)
    # Each task's output (kfp.local's executor input, the runner's warnings, the task's own log) goes to
    # a file under log_dir; stdout gets one line per task.
    log_dir = console.run_dir(home, name)
    try:
        with console.task_logs(log_dir):
            pipeline = build_pipeline(name, profile, ClusterSettings.for_local(cfg))
            task = pipeline(profile=profile, **params)
    except RuntimeError as e:
        raise PipelineRunError(f"{e} Task logs: {log_dir}") from None
    return {**summarize(name, profile, int(task.output), model_name=cfg.model_name), "logs": str(log_dir)}


def summarize(name: str, profile: str, version: int, model_name: str | None = None) -> dict:
    """What a user looks at after a run, read back from the MLflow registry and run (``model_name``: the
    name the run registered under, when a --set changed it)."""
    from mlflow import MlflowClient

    tracking.configure()
    client = MlflowClient()
    mv = client.get_model_version(model_name or build_config(name, profile).model_name, str(version))
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
        "mlflow_ui": (
            uri
            if (uri := tracking.resolve_tracking_uri()).startswith("http")
            else f"mlflow ui --backend-store-uri {uri} --port 5000"
        ),
    }


def _last_sample_grid(artifact_uri: str) -> str:
    """The newest sample grid: a local file path for a local artifact store, else its URI."""
    if artifact_uri.startswith("file://"):
        grids = sorted(Path(artifact_uri[len("file://") :], "samples").glob("*.png"))
        if grids:
            return str(grids[-1])
    return f"{artifact_uri}/samples/"


def print_summary(summary: dict, file=None) -> None:
    print("\n== ganforge run finished ==", file=file)
    for key, value in summary.items():
        if value is not None:
            print(f"{key:>22}: {value}", file=file)
