"""``ganforge serve``: a registered model behind MLflow's HTTP scoring server, from a verified copy.

The model is resolved (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), downloaded once into a
private temporary folder and verified there exactly as ``ganforge generate --model`` and
``ganforge verify-model`` verify it (``registry.download_verified``: the sha256 tag, then the
content rules of ``model_files``; then one load with pickle deserialization disallowed). Only then
is ``mlflow models serve -m <that folder> --env-manager local`` started on it, so the server never
downloads ``models:/…`` itself (a second download need not be what was checked).

The server runs as a child process in a session of its own, with this interpreter's ``bin``
folder first on ``PATH`` (MLflow starts ``uvicorn`` by name, which is found only there when
ganforge runs as ``.venv/bin/ganforge`` without the venv activated), with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` (MLflow then refuses any pickle record inside the
pt2 archive) and ``MLFLOW_DEFAULT_PREDICTION_DEVICE=cpu`` (the graph was exported on CPU, and
MLflow's pyfunc would otherwise pick ``cuda`` where a GPU is visible and fail to move it).

SIGTERM or Ctrl-C stops the whole server (its process group), removes the temporary copy and
ends with 143 or 130 (``ganforge.stop``).

Requests are MLflow's: ``POST /invocations`` with ``{"inputs": [[...], ...]}`` (latents (B, nz)
for a generator, images (B, C, H, W) in [-1, 1] for an image-to-image model such as cyclegan);
the answer is ``{"predictions": [...]}`` of the model's output. A model without MLflow's
``python_function`` flavour (a class-conditional program of ``(z, labels)``) cannot be served by
MLflow's server and is refused with the alternative.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from ganforge.errors import GanforgeError

from . import registry

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
DEFAULT_WORKERS = 1
PYFUNC_FLAVOR = "python_function"
STOP_GRACE_S = 30.0
"""How long the server may take to exit after SIGTERM before its process group is killed."""
SERVER_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}


class ServingError(GanforgeError, RuntimeError):
    """The model cannot be served as asked; the message names the problem and the fix."""


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ServingError(f"--port {port} is not a TCP port; give one from 1 to 65535 (e.g. --port {DEFAULT_PORT})")
    return port


def check_workers(workers: int) -> int:
    if workers < 1:
        raise ServingError(f"--workers {workers}: give the number of server processes, 1 or more (e.g. --workers 1)")
    return workers


def check_free(host: str, port: int) -> None:
    """The address can be bound now (so a taken port is named before the model is downloaded)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServingError(
            f"--host {host!r} is not an address of this machine ({e.strerror}); e.g. --host 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ServingError(
                f"cannot listen on {host}:{port} ({e.strerror}); another server holds that port, or the "
                "address is not this machine's — choose another --port (or --host)"
            ) from None


def check_pyfunc(local: Path, uri: str) -> None:
    """MLflow's server serves only models with the ``python_function`` flavour."""
    flavors = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {})
    if PYFUNC_FLAVOR not in flavors:
        raise ServingError(
            f"{uri} has no {PYFUNC_FLAVOR} flavour (a class-conditional program of (z, labels) is registered "
            "without it), so MLflow's scoring server cannot serve it; load it with mlflow.pytorch.load_model "
            "after `ganforge verify-model` (README: Serving the champion), or sample it with `ganforge generate`"
        )


def server_command(model_dir: Path, host: str, port: int, workers: int) -> list[str]:
    """``mlflow models serve`` on the verified folder, with this interpreter's MLflow."""
    return [
        *[sys.executable, "-m", "mlflow", "models", "serve"],
        *["-m", str(model_dir), "--env-manager", "local"],
        *["--host", host, "--port", str(port), "--workers", str(workers)],
    ]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's ``bin`` first on PATH, and ``SERVER_ENV``."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    env.update(SERVER_ENV)
    return env


@contextlib.contextmanager
def verified_copy(uri: str) -> Iterator[tuple[Path, dict]]:
    """The verified model folder in a private temporary folder (removed after the block), and its facts."""
    version = registry.resolve(uri)
    label = f"models:/{version.name}/{version.version}"
    with tempfile.TemporaryDirectory(prefix="ganforge-serve-") as tmp:  # mode 0700
        local = registry.download_verified(version, tmp)
        check_pyfunc(local, label)
        registry.load_verified_dir(local, label)  # what the server would refuse (a pickle) is refused here
        yield local, {"model": uri, "name": version.name, "version": int(version.version)}


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL after ``STOP_GRACE_S``."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = DEFAULT_WORKERS) -> int:
    """Verify ``uri`` and serve it until the server exits or this process is stopped; see the module
    docstring. Prints one JSON line (model, version, url) once the server starts. A server that exits
    on its own is a ServingError naming its status."""
    check_port(port)
    check_workers(workers)
    check_free(host, port)
    with verified_copy(uri) as (local, facts):
        proc = subprocess.Popen(server_command(local, host, port, workers), env=server_env(), start_new_session=True)
        try:
            url_host = f"[{host}]" if ":" in host else host
            print(json.dumps({**facts, "url": f"http://{url_host}:{port}/invocations"}), flush=True)
            status = proc.wait()
        finally:
            stop_server(proc)
    raise ServingError(
        f"the MLflow scoring server for {uri} exited with status {status} (its output above names the cause); "
        "fix that and run ganforge serve again"
    )
