"""A real ``mlflow server`` process for tests: sqlite backend in a temporary directory,
bound to 127.0.0.1 on a free port.

    with mlflow_server(tmp_path) as uri:            # artifacts proxied to tmp_path/artifacts
        ...
    with mlflow_server(tmp_path, artifacts_destination="s3://bucket/mlflow",
                       env={"MLFLOW_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": ..., ...}) as uri:
        ...

``shared_mlflow_server()`` gives one server per test process, for modules to share.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pipelines.stack import free_port

STARTUP_TIMEOUT_S = 120.0


def is_healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_command(
    port: int, backend_store_uri: str, artifacts_destination: str, args: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        "1",
        *args,
    ]


def stop(process: subprocess.Popen) -> None:
    """Stop the server and its workers (it runs in its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(
    workdir: str | os.PathLike,
    artifacts_destination: str | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> Iterator[str]:
    """Start ``mlflow server`` with state under ``workdir``; yield its http URI; stop it.

    ``artifacts_destination`` defaults to ``workdir/artifacts`` (served by the server, so
    clients never touch that path). ``env`` adds variables for the server (S3 settings, the
    basic-auth app's); ``args`` adds options (``--app-name basic-auth``).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    destination = artifacts_destination or (workdir / "artifacts").as_uri()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = workdir / "mlflow-server.log"
    server_env = {**os.environ, **(env or {})}
    server_env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            server_command(port, f"sqlite:///{workdir / 'mlflow.db'}", destination, args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not is_healthy(uri):
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy at {uri} after {STARTUP_TIMEOUT_S:.0f}s:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.25)
        yield uri
    finally:
        stop(process)


_shared_servers: dict[str, str] = {}


def shared_mlflow_server() -> str:
    """One server (default artifacts) for the whole test process, started on first use and
    stopped at exit: starting ``mlflow server`` costs seconds, so test modules share it."""
    if "uri" not in _shared_servers:
        workdir = tempfile.mkdtemp(prefix="ganforge-mlflow-server-")
        stack = contextlib.ExitStack()
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        _shared_servers["uri"] = stack.enter_context(mlflow_server(workdir))
        atexit.register(stack.close)
    return _shared_servers["uri"]
