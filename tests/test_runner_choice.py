"""Choosing how local tasks run: wrong choices and a missing Docker daemon fail first, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "GANFORGE_"))}
    env["GANFORGE_HOME"] = str(tmp_path / "home")
    return env


def test_unknown_runner_names_the_choices(tmp_path):
    make_env = clean_env(tmp_path)
    proc = subprocess.run(
        ["make", "run", "PIPELINE=dcgan", "RUNNER=kubernetes"],
        cwd=ROOT,
        env=make_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "RUNNER='kubernetes': give one of subprocess docker" in proc.stderr
    assert not (tmp_path / "home").exists(), "nothing may start before the runner is checked"
    cli = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "dcgan", "--runner", "podman"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=make_env,
    )
    assert cli.returncode == 2 and "unknown runner 'podman': choose one of subprocess, docker" in cli.stderr


def test_no_daemon_and_not_root_is_one_line(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock",
        "GANFORGE_HOME": str(tmp_path / "home"),
        "GANFORGE_CACHE": str(tmp_path / "cache"),
    }
    # As root, a new user namespace makes this process uid 65534 (the files stay readable to it).
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "pipelines", "images-local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Docker daemon answers and this is not root" in lines[0], proc.stderr


def test_stack_status_and_down_without_a_stack(tmp_path):
    env = clean_env(tmp_path)
    status = subprocess.run(
        [sys.executable, "-m", "pipelines", "stack", "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 1 and "no local stack running" in status.stderr
    down = subprocess.run(
        [sys.executable, "-m", "pipelines", "stack", "down"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0 and "no local stack recorded in GANFORGE_HOME" in down.stderr
    env_line = subprocess.run(
        [sys.executable, "-m", "pipelines", "stack", "env"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert env_line.returncode == 0 and env_line.stdout.strip() == ""
