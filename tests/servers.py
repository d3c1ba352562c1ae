"""The test servers, in one place: real processes on 127.0.0.1 that tests start and stop.

MLflow: a real ``mlflow server`` process, sqlite backend in a temporary directory, on a free port::

    with mlflow_server(tmp_path) as uri:            # artifacts proxied to tmp_path/artifacts
        ...
    with mlflow_server(tmp_path, artifacts_destination="s3://bucket/mlflow",
                       env={"MLFLOW_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": ..., ...}) as uri:
        ...

``shared_mlflow_server()`` gives one server per test process, for modules to share.

S3: moto's server in its own process::

    with moto_s3_server() as server, s3_environment(server):
        storage.write_text(server.uri("x.txt"), "hi")

or get pytest fixtures from the factory (in a test module or conftest.py)::

    moto_server, s3 = s3_fixtures(scope="module")   # the names pytest will know them by

``s3`` is function-scoped: it points AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL and the AWS
credentials at the server for one test and restores them afterwards, so subprocesses
started by the test (``mlflow server``, kfp.local) inherit them.

HTTP: ``flaky_http_proxy`` sits in front of an endpoint and answers the first N requests with an
error status, for testing retries against a real socket; ``http_status`` sends one JSON request (basic
auth optional) and returns the status code, for the servers' auth tests.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import http.server
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from pipelines.stack import free_port

REGION = "us-east-1"
# moto accepts any keys unless authentication is switched on (validate_credentials=True).
ANY_ACCESS_KEY_ID = "testing"
ANY_SECRET_ACCESS_KEY = "testing"

# The child binds port 0 and prints the port it got. It is terminated on exit, and also stops
# when its stdin closes, so it goes away when the test process dies without cleaning up.
_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint with one bucket and keys that work against it."""

    endpoint_url: str
    bucket: str
    access_key_id: str = ANY_ACCESS_KEY_ID
    secret_access_key: str = ANY_SECRET_ACCESS_KEY
    region: str = REGION

    def uri(self, *parts: str) -> str:
        """``s3://BUCKET/part/part``."""
        return "/".join([f"s3://{self.bucket}"] + [p.strip("/") for p in parts])

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3, MLflow and ganforge at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str = "s3"):
        """A boto3 client for this server with its keys, independent of the environment."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


# Variables that would override or confuse the ones S3Server.env() sets.
_CONFLICTING_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _read_port(process: subprocess.Popen, timeout_s: float) -> int:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout_s):
        raise RuntimeError(f"moto server did not report its port within {timeout_s}s")
    line = process.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"moto server failed to start (printed {line!r})")
    return int(line)


def _wait_until_answering(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it serves
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server at {url} did not answer within {timeout_s}s") from e
            time.sleep(0.05)


def _enable_authentication(server: S3Server) -> S3Server:
    """Create an IAM user allowed s3:*, then make moto check every request's keys.

    moto's /moto-api/reset-auth sets INITIAL_NO_AUTH_ACTION_COUNT for a running server:
    with 0, unknown access keys get InvalidAccessKeyId and wrong secrets SignatureDoesNotMatch.
    """
    iam = server.client("iam")
    iam.create_user(UserName="ganforge-test")
    iam.put_user_policy(
        UserName="ganforge-test",
        PolicyName="s3-all",
        PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
        ),
    )
    key = iam.create_access_key(UserName="ganforge-test")["AccessKey"]
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=5):
        pass
    return S3Server(server.endpoint_url, server.bucket, key["AccessKeyId"], key["SecretAccessKey"], server.region)


@contextlib.contextmanager
def moto_s3_server(
    bucket: str = "ganforge-test", *, validate_credentials: bool = False, start_timeout_s: float = 30.0
) -> Iterator[S3Server]:
    """Start moto's S3 server in a child process, create ``bucket``, stop it on exit.

    With ``validate_credentials`` the server checks keys (the yielded keys are valid ones).
    """
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            try:
                port = _read_port(process, start_timeout_s)
            except RuntimeError as e:
                stderr.seek(0)
                raise RuntimeError(f"{e}; stderr: {stderr.read().decode()[-2000:]}") from None
            server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", bucket=bucket)
            _wait_until_answering(server.endpoint_url, start_timeout_s)
            server.client().create_bucket(Bucket=bucket)
            yield _enable_authentication(server) if validate_credentials else server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=60)
            process.stdin.close()
            process.stdout.close()


@contextlib.contextmanager
def s3_environment(server: S3Server) -> Iterator[S3Server]:
    """Point the environment at ``server`` for the block, then restore it exactly."""
    names = tuple(server.env()) + _CONFLICTING_VARIABLES
    saved = {name: os.environ.get(name) for name in names}
    for name in _CONFLICTING_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_fixtures(
    server_name: str = "moto_server",
    env_name: str = "s3",
    *,
    scope: str = "module",
    bucket: str = "ganforge-test",
    validate_credentials: bool = False,
) -> tuple[Callable, Callable]:
    """Two pytest fixtures: the server (``scope``) and a function-scoped one that also sets the env.

    Assign both to module globals under the same names, e.g.
    ``moto_server, s3 = s3_fixtures()``.
    """

    @pytest.fixture(scope=scope, name=server_name)
    def server_fixture() -> Iterator[S3Server]:
        with moto_s3_server(bucket, validate_credentials=validate_credentials) as server:
            yield server

    @pytest.fixture(name=env_name)
    def env_fixture(request: pytest.FixtureRequest) -> Iterator[S3Server]:
        server = request.getfixturevalue(server_name)
        with s3_environment(server):
            yield server

    return server_fixture, env_fixture


@dataclass
class FlakyProxy:
    """What a running ``flaky_http_proxy`` has seen."""

    url: str
    requests: int = 0
    failures_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def _make_proxy_handler(
    state: FlakyProxy,
    upstream: urllib.parse.SplitResult,
    fail_first: int,
    status: int,
    error_code: str,
    fail_path: str | None = None,
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.requests += 1
                fail = state.requests <= fail_first or (fail_path is not None and fail_path in self.path)
                state.failures_served += fail
            if fail:
                payload = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{error_code}</Code>"
                    "<Message>flaky proxy says try again</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", response.getheader("Content-Length") or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextlib.contextmanager
def flaky_http_proxy(
    upstream_url: str,
    *,
    fail_first: int,
    status: int = 503,
    error_code: str = "ServiceUnavailable",
    port: int = 0,
    fail_path: str | None = None,
) -> Iterator[FlakyProxy]:
    """An HTTP proxy on 127.0.0.1 that answers the first ``fail_first`` requests with ``status``,
    and every request whose path contains ``fail_path`` (an object whose upload always fails).

    Later requests are relayed to ``upstream_url``. It stops when the block exits.
    """
    upstream = urllib.parse.urlsplit(upstream_url)
    state = FlakyProxy(url="")
    handler = _make_proxy_handler(state, upstream, fail_first, status, error_code, fail_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---- MLflow ----------------------------------------------------------------------------------------------

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


def http_status(url: str, method: str = "GET", auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    """Send one JSON request (HTTP basic auth when ``auth`` is given); the status code, errors included."""
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
