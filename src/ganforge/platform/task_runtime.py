"""Where a pipeline task ran: host name, user, cgroup, container kind and code revision.

Each KFP component records this on the pipeline's MLflow run (tags ``ganforge.task.<task>.*``),
so a run shows which pod or container did each step, as whom, with which image's code — and
the local container tests can prove that every task really ran in its own container.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from . import tracking
from .settings import Settings

TAG_PREFIX = "ganforge.task"


def cgroup() -> str:
    """This process's cgroup path (v2 line, else the v1 cpu/memory controller's), "" if unreadable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ""
    entries = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    for _, controllers, path in entries:
        if controllers in ("", "cpu,cpuacct", "memory", "cpuset"):
            return path
    return entries[0][2] if entries else ""


def container_kind() -> str:
    if Path("/.dockerenv").exists():
        return "docker"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return "none"


def describe() -> dict[str, str]:
    """Facts about this process's runtime, all strings (MLflow tag values)."""
    return {
        "hostname": socket.gethostname(),
        "uid": str(os.getuid()),
        "gid": str(os.getgid()),
        "cgroup": cgroup(),
        "container": container_kind(),
        "image_revision": Settings.from_env().git_sha,
    }


def record_task(run_id: str, task: str) -> dict[str, str]:
    """Tag the pipeline's MLflow run with where ``task`` ran; returns the facts. No-op without a run id."""
    facts = describe()
    if run_id:
        tracking.configure()
        client = tracking.client()
        for key, value in facts.items():
            client.set_tag(run_id, f"{TAG_PREFIX}.{task}.{key}", value)
    return facts
