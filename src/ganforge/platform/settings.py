"""Deployment settings: the platform's ``GANFORGE_*`` environment variables, read once.

An entry point (``ganforge.cli``'s commands, a pipeline step, the training worker ``ganforge.platform.worker``,
``python -m pipelines``) builds one
``Settings.from_env()`` and passes it down; nothing below reads these variables at call time.
The names, defaults and meanings are those in README.md's environment table, unchanged.
Credentials (AWS_*, MLFLOW_TRACKING_*) are not settings: boto3 and MLflow read them themselves,
and they never enter a compiled pipeline or a manifest.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GanforgeError
from . import gpu_nodes

ARTIFACT_ROOT_ENV = "GANFORGE_ARTIFACT_ROOT"
IMAGE_ENV = "GANFORGE_IMAGE"
NAMESPACE_ENV = "GANFORGE_NAMESPACE"
GPUS_PER_NODE_ENV = "GANFORGE_GPUS_PER_NODE"
JOB_POLL_ENV = "GANFORGE_JOB_POLL_S"
GIT_SHA_ENV = "GANFORGE_GIT_SHA"
MLFLOW_RUN_ID_ENV = "GANFORGE_MLFLOW_RUN_ID"
# The module torchrun ranks and cluster job pods of a pipeline run start: they join the run MLFLOW_RUN_ID_ENV names.
WORKER_MODULE = "ganforge.platform.worker"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SettingsError(GanforgeError, ValueError):
    """A deployment setting has a value ganforge cannot use; the message names the variable and the fix."""


def _number(env: Mapping[str, str], name: str, default: str | None, kind: type, check, need: str):
    raw = env.get(name, "") or default
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not check(value):
        raise SettingsError(f"{name}={raw!r} must be {need}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where and how this deployment runs; defaults are a laptop's."""

    artifact_root: str = ""
    """GANFORGE_ARTIFACT_ROOT (e.g. ``s3://ganforge-artifacts``): where step outputs are mirrored; "" for none."""
    image: str = ""
    """GANFORGE_IMAGE: the image cluster training jobs run (ganforge installed, torchrun on PATH)."""
    namespace: str = ""
    """GANFORGE_NAMESPACE, else the namespace of the pod this runs in, else ``ganforge``."""
    gpus_per_node: int | None = None
    """GANFORGE_GPUS_PER_NODE: GPUs per node of a TrainJob/PyTorchJob; None: the config decides
    (``gpu_nodes.gpus_per_node``)."""
    job_poll_s: float = 10.0
    """GANFORGE_JOB_POLL_S: seconds between status reads of a cluster training job."""
    gpu_node_selector: dict = field(default_factory=dict)
    """GANFORGE_GPU_NODE_SELECTOR, parsed (``gpu_nodes``)."""
    gpu_tolerations: tuple = (gpu_nodes.GPU_TOLERATION,)
    """GANFORGE_GPU_TOLERATIONS, parsed (``gpu_nodes``); default: nvidia.com/gpu:NoSchedule."""
    git_sha: str = ""
    """GANFORGE_GIT_SHA: the source revision the image was built from, when set."""
    mlflow_run_id: str = ""
    """GANFORGE_MLFLOW_RUN_ID: the pipeline's MLflow run, handed to torchrun ranks and cluster jobs."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``env`` (default: this process's environment), checked."""
        env = os.environ if env is None else env
        namespace = env.get(NAMESPACE_ENV, "")
        if not namespace:
            namespace = (
                SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file() else "ganforge"
            )
        return cls(
            artifact_root=env.get(ARTIFACT_ROOT_ENV, "").rstrip("/"),
            image=env.get(IMAGE_ENV, ""),
            namespace=namespace,
            gpus_per_node=_number(
                env, GPUS_PER_NODE_ENV, None, int, lambda v: v >= 0, "a whole number >= 0 (0 trains on CPU)"
            ),
            job_poll_s=_number(env, JOB_POLL_ENV, "10", float, lambda v: v > 0, "a positive number of seconds"),
            gpu_node_selector=gpu_nodes.gpu_node_selector(env),
            gpu_tolerations=tuple(gpu_nodes.gpu_tolerations(env)),
            git_sha=env.get(GIT_SHA_ENV, "").strip(),
            mlflow_run_id=env.get(MLFLOW_RUN_ID_ENV, ""),
        )


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_commit(settings: Settings | None = None, source: Path = PACKAGE_DIR) -> str:
    """The commit of the code that runs: GANFORGE_GIT_SHA when set, else ``git rev-parse HEAD`` of
    ``source`` (ganforge's own source tree, not the working directory), else ``unknown``.

    The one precedence for runs, versions, KFP run names and image labels: an explicit setting wins
    over what git says, because it is a statement about what runs — the images set it (they hold no
    .git), and a deployment that names its revision means it; git answers only when nobody said.
    """
    settings = Settings.from_env() if settings is None else settings
    if settings.git_sha:
        return settings.git_sha
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
