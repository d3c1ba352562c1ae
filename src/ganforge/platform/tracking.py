"""MLflow tracking: one MLflow run per pipeline run, every pipeline step logs into it.

Each KFP task is its own process, so nothing here relies on MLflow's "active run": every
function takes the run id that the first step created and writes through ``MlflowClient``.

Where things go:
- ``MLFLOW_TRACKING_URI`` set (a real ``mlflow server``): tracking, registry and artifacts
  are the server's (artifacts proxied or wherever its experiments point).
- otherwise: tracking and registry in ``sqlite:///$GANFORGE_HOME/mlflow.db`` and artifacts
  under ``$GANFORGE_HOME/mlartifacts/<experiment>`` (``GANFORGE_HOME`` defaults to
  ``./.ganforge``, made absolute so every step of a local run agrees on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from ganforge import paths
from ganforge.config import PipelineConfig
from ganforge.errors import GanforgeError
from ganforge.fileio import atomic_file, atomic_write_text
from ganforge.platform.settings import git_commit

CONFIG_HASH_TAG = "ganforge.config_hash"
GIT_COMMIT_TAG = "ganforge.git_commit"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's standard commit tag (its UI links it); ``GIT_COMMIT_TAG`` stays for compatibility."""
KFP_RUN_ID_TAG = "ganforge.kfp_run_id"
PIPELINE_TAG = "ganforge.pipeline"
PROFILE_TAG = "ganforge.profile"

CONFIG_ARTIFACT = "config.json"
"""The run artifact ``start_pipeline_run`` writes: the config the run (and every version it registers) uses."""
MAX_PARAM_VALUE_CHARS = 6000
# MLflow's REST limits for one log_batch call.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

LOSS_PREFIXES = ("loss",)
QUALITY_PREFIXES = ("fid", "kid")


class TrackingError(GanforgeError, RuntimeError):
    """A tracking operation failed; the message names the run or setting and the fix."""


def ganforge_home(home: str | os.PathLike | None = None) -> Path:
    """The absolute local state directory: ``home``, else ``$GANFORGE_HOME``, else ``./.ganforge``."""
    return Path(home).expanduser().resolve() if home is not None else paths.home()


def resolve_tracking_uri(home: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set (a real server wins), else the local sqlite store."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env_uri:
        return env_uri
    return f"sqlite:///{ganforge_home(home) / 'mlflow.db'}"


def is_local_store(tracking_uri: str) -> bool:
    """True for a store this process writes itself (sqlite or a file path), False for a server."""
    return not tracking_uri.startswith(("http://", "https://", "databricks"))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def configure(home: str | None = None) -> str:
    """Point MLflow's tracking and registry at the resolved URI; return it."""
    uri = resolve_tracking_uri(home)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if db is not None and uri not in _READY_STORES:
        _create_sqlite_store(db, uri)
        _READY_STORES.add(uri)
    return uri


_READY_STORES: set[str] = set()
"""The sqlite URIs this process has already created or checked (``_create_sqlite_store``)."""


def _create_sqlite_store(db: Path, uri: str) -> None:
    """Create or upgrade the sqlite store's tables under an exclusive lock on ``<db>.lock``.

    MLflow builds a fresh file's schema on first use, by migrations; two processes doing that at once
    (two seeds started together in a new GANFORGE_HOME) fail with alembic's "expected to match one
    row". Under the lock the first creates the tables and the others find them.
    """
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        c = MlflowClient(uri, uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)


def client() -> MlflowClient:
    """A client on the URIs ``configure`` set (configuring with the defaults if nobody did)."""
    if not mlflow.is_tracking_uri_set():
        configure()
    return MlflowClient()


def param_value(value: object) -> str:
    """An MLflow param value: a string of at most 6000 characters (None becomes "None")."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_VALUE_CHARS]


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def experiment_artifact_location(experiment_name: str, tracking_uri: str) -> str | None:
    """Local store: ``mlartifacts/<name>`` beside the sqlite file (``$GANFORGE_HOME`` by default).

    A server: None, so the server's own artifact root (proxied, e.g. S3) applies.
    """
    if not is_local_store(tracking_uri):
        return None
    db = sqlite_path(tracking_uri)
    root = db.parent if db is not None else ganforge_home()
    return (root / "mlartifacts" / experiment_name).as_uri()


def get_or_create_experiment(name: str, artifact_location: str | None) -> str:
    """Experiment id by name, creating it; tolerant of another step creating it concurrently."""
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def namespaced(key: str) -> str:
    """``kfp_run_id`` → ``ganforge.kfp_run_id``; keys with a namespace (``mlflow.note``) stay."""
    return key if "." in key else f"ganforge.{key}"


def run_tags(cfg: PipelineConfig, tags: Mapping[str, str] | None) -> dict[str, str]:
    """The tags every pipeline run carries; explicit non-empty ``tags`` win over the defaults."""
    commit = git_commit()
    out = {
        CONFIG_HASH_TAG: cfg.config_hash(),
        GIT_COMMIT_TAG: commit,
        MLFLOW_GIT_COMMIT_TAG: commit,
        PIPELINE_TAG: cfg.name,
        PROFILE_TAG: cfg.profile,
    }
    out.update({namespaced(k): str(v) for k, v in (tags or {}).items() if str(v)})
    return out


def start_pipeline_run(cfg: PipelineConfig, tags: dict | None = None) -> str:
    """Create the pipeline run's MLflow run (params, config.json, tags); return its id.

    The run stays open: later steps, in other processes, log into it by id, and
    ``finish_pipeline_run`` closes it.
    """
    c = client()
    uri = mlflow.get_tracking_uri()
    experiment_id = get_or_create_experiment(cfg.name, experiment_artifact_location(cfg.name, uri))
    run = c.create_run(
        experiment_id, tags=run_tags(cfg, tags), run_name=f"{cfg.name}-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_id = run.info.run_id
    log_params(run_id, cfg.flat())
    with tempfile.TemporaryDirectory(prefix="ganforge-config-") as tmp:
        config_json = atomic_write_text(Path(tmp) / CONFIG_ARTIFACT, cfg.to_json())
        c.log_artifact(run_id, str(config_json))
    return run_id


def finish_pipeline_run(run_id: str, status: str = "FINISHED") -> None:
    """Close the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client().set_terminated(run_id, status=status)


def reopen_pipeline_run(run_id: str) -> None:
    """Mark a closed run ``RUNNING`` again (``train --resume`` continues it); its end time is kept
    until ``finish_pipeline_run`` sets a new one."""
    client().update_run(run_id, status="RUNNING")


FAILED_STEP_TAG = "ganforge.failed_step"
"""Run tag: the pipeline step (KFP task name, e.g. ``train``) that failed the run."""
ERROR_TAG = "ganforge.error"
STEP_TAG_PREFIX = "ganforge.step."
"""Run tags ``ganforge.step.<step>`` = running | done | failed: how far each step got."""
MAX_ERROR_CHARS = 500


@contextlib.contextmanager
def tracked_step(run_id: str, step: str) -> Iterator[None]:
    """Record a pipeline step's progress on its MLflow run: ``ganforge.step.<step>`` goes running →
    done, or → failed with ``ganforge.failed_step`` and ``ganforge.error`` (the exception re-raised).

    The run's status is left to the pipeline's exit task (``end_pipeline_run``): a step that fails
    may still be retried by KFP, and a killed step (OOM) raises nothing; the exit task always runs.
    """
    if not run_id:
        yield
        return
    c = client()
    if c.get_run(run_id).data.tags.get(FAILED_STEP_TAG) == step:  # KFP retries this step: not failed (yet)
        c.delete_tag(run_id, FAILED_STEP_TAG)
        c.delete_tag(run_id, ERROR_TAG)
    c.set_tag(run_id, STEP_TAG_PREFIX + step, "running")
    try:
        yield
    except BaseException as e:
        message = (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[0]
        try:
            for key, value in (
                (STEP_TAG_PREFIX + step, "failed"),
                (FAILED_STEP_TAG, step),
                (ERROR_TAG, message[:MAX_ERROR_CHARS]),
            ):
                c.set_tag(run_id, key, value)
        except Exception as tagging:  # MLflow itself may be what failed: never hide the step's own error
            print(
                f"ganforge: could not record the failure of step {step!r} on MLflow run {run_id}: {tagging}",
                file=sys.stderr,
            )
        raise
    c.set_tag(run_id, STEP_TAG_PREFIX + step, "done")


def find_pipeline_run(experiment_name: str, kfp_run: str) -> str | None:
    """The MLflow run that KFP run ``kfp_run`` opened in ``experiment_name`` (tag ganforge.kfp_run_id), or None."""
    c = client()
    experiment = c.get_experiment_by_name(experiment_name)
    if experiment is None or not kfp_run:
        return None
    if "'" in kfp_run:
        raise TrackingError(f"KFP run name {kfp_run!r} contains a quote; MLflow's filter syntax cannot match it")
    runs = c.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{kfp_run}'", max_results=2
    )
    if len(runs) > 1:
        raise TrackingError(
            f"{len(runs)} MLflow runs in experiment {experiment_name!r} carry "
            f"{KFP_RUN_ID_TAG}={kfp_run!r}; expected one per KFP run"
        )
    return runs[0].info.run_id if runs else None


def end_pipeline_run(run_id: str, kfp_state: str) -> str:
    """End the pipeline's MLflow run from KFP's final state of the DAG; returns the status set.

    ``SUCCEEDED`` → FINISHED (a ``failed_step`` left by a retried, then recovered step is removed);
    ``CANCELLED``/``CANCELED`` → KILLED; anything else → FAILED, with ``ganforge.failed_step`` naming
    the step that recorded its failure, else the step(s) still marked running (killed without an
    exception), else ``unknown``.
    """
    c = client()
    run = c.get_run(run_id)
    tags = run.data.tags
    state = (kfp_state or "").upper()
    c.set_tag(run_id, "ganforge.kfp_state", state or "unknown")
    if state == "SUCCEEDED":
        for key in (FAILED_STEP_TAG, ERROR_TAG):
            if key in tags:
                c.delete_tag(run_id, key)
        if run.info.status != "FINISHED":
            c.set_terminated(run_id, status="FINISHED")
        return "FINISHED"
    if FAILED_STEP_TAG not in tags:
        running = sorted(
            k[len(STEP_TAG_PREFIX) :] for k, v in tags.items() if k.startswith(STEP_TAG_PREFIX) and v == "running"
        )
        c.set_tag(run_id, FAILED_STEP_TAG, ",".join(running) or "unknown")
    status = "KILLED" if state in ("CANCELLED", "CANCELED") else "FAILED"
    c.set_terminated(run_id, status=status)
    return status


@contextlib.contextmanager
def run_experiment(run_id: str) -> Iterator[str]:
    """Make the run's experiment MLflow's active one inside the block, restoring the previous after.

    ``mlflow.<flavor>.log_model(..., run_id=…)`` creates its LoggedModel in the *active*
    experiment, not the run's: without this it lands in experiment 0 ("Default"), whose artifact
    root on a sqlite store is ``./mlruns`` in the current directory.
    """
    from mlflow.tracking import fluent

    experiment_id = client().get_run(run_id).info.experiment_id
    saved_id, saved_env = fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield experiment_id
    finally:
        fluent._active_experiment_id = saved_id
        if saved_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = saved_env


def metric_entities(metrics: Mapping[str, float], step: int, timestamp_ms: int) -> list[Metric]:
    """Metrics as MLflow entities; values that are not numbers are a bug in the caller."""
    out = []
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TrackingError(f"metric {key!r}={value!r} is not a number; log only scalars") from None
        out.append(Metric(key, number, timestamp_ms, step))
    return out


def log_metrics(run_id: str, metrics: dict, step: int | None = None) -> None:
    """Log scalar metrics at ``step`` (0 when None) in as few requests as MLflow allows."""
    entities = metric_entities(metrics, step or 0, int(time.time() * 1000))
    c = client()
    for batch in chunks(entities, MAX_METRICS_PER_BATCH):
        c.log_batch(run_id, metrics=batch, synchronous=True)


class MlflowMetricsCallback:
    """Training's logging callback: ``cb(step, {"loss_d": ..., "loss_g": ...})``; rank 0 alone calls it.

    Calls are buffered and written with one ``log_batch`` request when ``flush_interval_s``
    has passed since the last write (or the buffer reaches MLflow's batch limit), so logging
    every few steps costs almost nothing. The first call writes at once (a run shows a curve
    point early); ``flush()`` at the end of training writes the rest. A crash loses at most
    ``flush_interval_s`` of curve points, never the checkpoint.
    """

    def __init__(self, run_id: str, flush_interval_s: float = 5.0):
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.pending: list[Metric] = []
        self.last_flush = -math.inf

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.pending += metric_entities(metrics, step, int(time.time() * 1000))
        overdue = time.monotonic() - self.last_flush >= self.flush_interval_s
        if overdue or len(self.pending) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered."""
        c = client()
        for batch in chunks(self.pending, MAX_METRICS_PER_BATCH):
            c.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.pending = []
        self.last_flush = time.monotonic()


def log_params(run_id: str, params: Mapping[str, object]) -> None:
    """Log params (values become strings of at most 6000 characters)."""
    entities = [Param(k, param_value(v)) for k, v in params.items()]
    c = client()
    for batch in chunks(entities, MAX_PARAMS_PER_BATCH):
        c.log_batch(run_id, params=batch, synchronous=True)


def log_artifact(run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    """Upload one file under ``artifact_path`` of the run."""
    if not Path(local_path).is_file():
        raise TrackingError(f"cannot log artifact {local_path!r}: no such file")
    client().log_artifact(run_id, local_path, artifact_path)


def log_artifacts(run_id: str, local_dir: str, artifact_path: str) -> None:
    """Upload a directory's contents under ``artifact_path`` of the run."""
    if not Path(local_dir).is_dir():
        raise TrackingError(f"cannot log artifacts from {local_dir!r}: no such directory")
    client().log_artifacts(run_id, local_dir, artifact_path)


def metric_histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run as ``{key: [(step, value), ...]}`` in step, then logging, order."""
    c = client()
    keys = sorted(c.get_run(run_id).data.metrics)
    histories = {k: sorted(c.get_metric_history(run_id, k), key=lambda m: (m.step, m.timestamp)) for k in keys}
    return {k: [(m.step, m.value) for m in history] for k, history in histories.items()}


def plot_curves(histories: Mapping[str, list[tuple[int, float]]], out_png: str | os.PathLike) -> Path:
    """Losses vs step (left) and FID/KID vs step (right) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a pipeline pod
    import matplotlib.pyplot as plt

    panels = (("losses", LOSS_PREFIXES), ("FID / KID", QUALITY_PREFIXES))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, prefixes) in zip(axes, panels):
        series = {k: h for k, h in histories.items() if k.startswith(prefixes) and h}
        for key, history in series.items():
            steps, values = zip(*history)
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=key)
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("generator step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)


def log_curves(run_id: str, out_png: str) -> Path:
    """Plot the run's metric history to ``out_png`` and log it as ``plots/curves.png``."""
    png = plot_curves(metric_histories(run_id), out_png)
    with tempfile.TemporaryDirectory(prefix="ganforge-curves-") as tmp:
        # The artifact name is fixed whatever out_png is called, so the UI path is stable.
        named = Path(tmp) / "curves.png"
        named.write_bytes(png.read_bytes())
        client().log_artifact(run_id, str(named), "plots")
    return png
