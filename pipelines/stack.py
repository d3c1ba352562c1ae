"""The cluster's tracking arrangement on one machine: MLflow server image + PostgreSQL + S3.

``make run … RUNNER=docker`` brings it up (``python -m pipelines stack up``), and it stays up
for ``make generate`` / ``make registry`` until ``make stack-down``:

- PostgreSQL (Debian's server binaries) as a host process on 127.0.0.1, its own cluster made
  by ``initdb`` with a random password (scram-sha-256), database ``mlflow``;
- an S3 endpoint: moto's server as a host process on 127.0.0.1, bucket ``ganforge-mlflow``;
- the ``localhost/ganforge-mlflow-server:dev`` image as a container (host network) serving
  tracking + registry from Postgres and proxying artifacts to ``s3://ganforge-mlflow/artifacts``
  — clients (the DAG's task containers, ``ganforge generate``) need no S3 credentials.

The MLflow server runs MLflow's basic-auth app as the cluster's does (k8s/base/mlflow.yaml):
every request but ``/health`` needs a user. ``up`` generates an admin account and the pipeline's
own (non-admin) user for this GANFORGE_HOME, kept in ``stack/mlflow-auth.json`` (mode 0600, gone
with ``stack down``); clients get the pipeline user's ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` from ``Stack.env()`` (``python -m pipelines stack env``), and the
DAG's task containers get them through the Docker API's environment.

No credential is part of any command line: the Postgres password, the S3 keys and the auth
settings reach the MLflow container as environment variables named on ``docker run -e NAME``
(values taken from this process's environment), and the backend URI carries no password (libpq
reads PGPASSWORD); the auth config (``stack/mlflow-auth/basic_auth.ini``, mounted read-only)
holds no secret either.

The stack's state lives as long as the stack: moto keeps objects in memory, so ``stack down``
(or a stack found dead) discards the Postgres cluster too, keeping registry and artifacts in
step. State: GANFORGE_HOME/stack/ (stack.json, pgpass, logs); as root the Postgres data
directory and its log live under the system temp dir (the ``postgres`` user must reach them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ganforge import paths
from ganforge.errors import GanforgeError

from . import docker_local

BUCKET = "ganforge-mlflow"
PG_USER = PG_DB = "mlflow"
# moto accepts any keys; these name the local stack's, never a real account's.
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "ganforge-local",
    "AWS_SECRET_ACCESS_KEY": "ganforge-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
STARTUP_TIMEOUT_S = 120.0
ADMIN_USER = "ganforge-admin"
PIPELINE_USER = "ganforge-pipeline"
AUTH_FILE = "mlflow-auth.json"
AUTH_CONFIG_DIR = "mlflow-auth"
AUTH_CONFIG_MOUNT = "/etc/mlflow-auth"
AUTH_SERVER_ARGS = ("--app-name", "basic-auth")
"""MLflow's basic-auth app, as the cluster's server runs it (k8s/base/mlflow.yaml)."""


class StackError(GanforgeError, RuntimeError):
    """The local stack cannot start or is not running; the message says what to do."""


@dataclass
class Stack:
    home: str
    tracking_uri: str
    s3_endpoint: str
    artifacts_destination: str
    postgres_port: int
    postgres_data: str
    s3_pid: int
    container: str
    logs: str

    def env(self) -> dict[str, str]:
        """What a client of the stack needs: its URI and the pipeline user's credentials."""
        auth = read_auth(Path(self.home))
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": auth["username"],
            "MLFLOW_TRACKING_PASSWORD": auth["password"],
        }


def stack_dir(home: Path | None = None) -> Path:
    return (home or paths.home()) / "stack"


def container_name(home: Path) -> str:
    return "ganforge-mlflow-" + hashlib.sha256(str(home).encode()).hexdigest()[:10]


def new_auth(home: Path) -> dict[str, str]:
    """Fresh credentials for this GANFORGE_HOME's stack, written to ``stack/mlflow-auth.json`` (0600)."""
    auth = {
        "admin_username": ADMIN_USER,
        "admin_password": secrets.token_urlsafe(24),
        "username": PIPELINE_USER,
        "password": secrets.token_urlsafe(24),
        "flask_secret_key": secrets.token_urlsafe(32),
    }
    path = stack_dir(home) / AUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(json.dumps(auth, indent=2))
    tmp.replace(path)
    return auth


def read_auth(home: Path) -> dict[str, str]:
    try:
        return json.loads((stack_dir(home) / AUTH_FILE).read_text())
    except (OSError, ValueError) as e:
        raise StackError(
            f"the local stack's MLflow credentials ({stack_dir(home) / AUTH_FILE}) are unreadable ({e}); "
            "restart the stack: make stack-down && make stack-up"
        ) from None


def write_auth_config(home: Path, database_uri: str) -> Path:
    """The basic-auth app's config (the cluster's ``basic_auth.ini``: READ by default, users stored
    in ``database_uri``); no secret in it. Returns its folder (mounted into the container)."""
    folder = stack_dir(home) / AUTH_CONFIG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the server's uid 1000 reads it through the mount
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )
    ini.chmod(0o644)
    return folder


def auth_server_env(auth: dict[str, str], config_path: str) -> dict[str, str]:
    """The basic-auth app's settings, as environment variables of the server (never arguments)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": config_path,
        "MLFLOW_AUTH_ADMIN_USERNAME": auth["admin_username"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth["admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": auth["flask_secret_key"],
    }


def _auth_call(uri: str, method: str, path: str, user: tuple[str, str], body: dict | None = None) -> int:
    request = urllib.request.Request(
        uri + path, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def create_pipeline_user(uri: str, auth: dict[str, str]) -> None:
    """Create the pipeline's user with the admin account (what the cluster's mlflow-auth-init Job does)."""
    admin = (auth["admin_username"], auth["admin_password"])
    user = {"username": auth["username"], "password": auth["password"]}
    status = _auth_call(uri, "POST", "/api/2.0/mlflow/users/create", admin, user)
    if status != 200:
        raise StackError(f"creating the MLflow user {auth['username']} at {uri} failed: HTTP {status}")
    status = _auth_call(uri, "GET", "/api/2.0/mlflow/users/current", (auth["username"], auth["password"]))
    if status != 200:
        raise StackError(f"the MLflow user {auth['username']} cannot log in at {uri}: HTTP {status}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check, what: str, log: Path | None = None, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise StackError(f"{what} did not come up within {timeout_s:.0f} s (log {log}): {tail.strip()[-400:]}")
        time.sleep(0.5)


def postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    if shutil.which(name):
        return shutil.which(name)
    raise StackError(f"PostgreSQL's {name} not found: apt-get install postgresql (`make stack-up` does it as root)")


def as_postgres_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, run its tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def postgres_data_dir(home: Path) -> Path:
    if os.geteuid() == 0:  # the postgres user may not traverse GANFORGE_HOME's parents
        return Path(tempfile.gettempdir()) / f"ganforge-pg-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}"
    return stack_dir(home) / "postgres"


def start_postgres(home: Path, password: str, logs: Path) -> tuple[int, Path]:
    data = postgres_data_dir(home)
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, mode=0o700)
    pwfile = data / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    cluster = data / "cluster"
    init = subprocess.run(
        as_postgres_user(
            [
                postgres_bin("initdb"),
                "-D",
                str(cluster),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    pwfile.unlink()
    if init.returncode != 0:
        raise StackError(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
    port = free_port()
    log = data / "postgres.log"  # beside the cluster: as root, the postgres user may not reach GANFORGE_HOME
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    start = subprocess.run(
        as_postgres_user(
            [postgres_bin("pg_ctl"), "-D", str(cluster), "-l", str(log), "-o", options, "-w", "-t", "120", "start"]
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if start.returncode != 0:
        raise StackError(
            f"PostgreSQL did not start: {(start.stderr or start.stdout).strip()[-300:]} "
            f"(log {log}: {log.read_text(errors='replace')[-400:] if log.exists() else ''})"
        )
    create = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CREATE DATABASE {PG_DB}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PGPASSWORD=password),
    )
    if create.returncode != 0:
        raise StackError(f"creating database {PG_DB} failed: {create.stderr.strip()[-300:]}")
    return port, data


def stop_postgres(data: Path) -> None:
    cluster = data / "cluster"
    if (cluster / "postmaster.pid").exists():
        subprocess.run(
            as_postgres_user([postgres_bin("pg_ctl"), "-D", str(cluster), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
    shutil.rmtree(data, ignore_errors=True)


def start_s3(logs: Path) -> tuple[int, str]:
    port = free_port()
    with open(logs / "s3.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(endpoint + "/moto-api/"), "S3 server (moto)", logs / "s3.log")
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_KEYS["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    return process.pid, endpoint


def is_our_s3(pid: int) -> bool:
    try:
        return b"moto.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_mlflow(
    home: Path, pg_port: int, password: str, s3_endpoint: str, logs: Path, auth: dict[str, str]
) -> tuple[str, str]:
    docker_local.check_fresh(docker_local.MLFLOW_IMAGE)
    name = container_name(home)
    docker_local.docker("rm", "-f", name, check=False)
    port = free_port()
    database_uri = f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{pg_port}/{PG_DB}"
    # Users live in the tracking database, in their own tables (as on the cluster).
    config = write_auth_config(home, database_uri)
    auth_env = auth_server_env(auth, f"{AUTH_CONFIG_MOUNT}/basic_auth.ini")
    env = dict(
        os.environ,
        **S3_KEYS,
        **auth_env,
        PGPASSWORD=password,
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        MLFLOW_BACKEND_STORE_URI=database_uri,
    )
    names = ["PGPASSWORD", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_BACKEND_STORE_URI", *S3_KEYS, *auth_env]
    cmd = [
        "docker",
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--label",
        f"dev.ganforge.stack={home}",
        *[a for n in names for a in ("-e", n)],
        "--volume",
        f"{config}:{AUTH_CONFIG_MOUNT}:ro",
        docker_local.MLFLOW_IMAGE,
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--artifacts-destination",
        f"s3://{BUCKET}/artifacts",
        *AUTH_SERVER_ARGS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0:
        raise StackError(f"starting the MLflow server container failed: {proc.stderr.strip()[-400:]}")
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        state = docker_local.docker("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        if state != "true":
            logs_text = docker_local.docker("logs", "--tail", "30", name, check=False)
            raise StackError(f"the MLflow server container exited: {(logs_text.stdout + logs_text.stderr)[-600:]}")
        return answers(uri + "/health")

    wait_until(healthy, f"MLflow server container {name}")
    create_pipeline_user(uri, auth)
    return uri, name


def read(home: Path | None = None) -> Stack | None:
    path = stack_dir(home) / "stack.json"
    try:
        return Stack(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(stack: Stack) -> bool:
    """Running, and with the credentials its clients need (a stack from before auth has none)."""
    return (
        (stack_dir(Path(stack.home)) / AUTH_FILE).is_file()
        and is_our_s3(stack.s3_pid)
        and answers(stack.tracking_uri + "/health")
    )


def up(home: Path | None = None, log=print) -> Stack:
    """The running local stack of GANFORGE_HOME, started when none answers (idempotent)."""
    home = (home or paths.home()).resolve()
    current = read(home)
    if current is not None:
        if healthy(current):
            return current
        log("the local stack recorded in GANFORGE_HOME is not running; discarding its state and starting afresh")
        down(home, log=lambda *_: None)
    docker_local.ensure_daemon(home / "logs")
    docker_local.check_fresh(docker_local.MLFLOW_IMAGE)
    logs = stack_dir(home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    # Kept for the user's own psql (like ~/.pgpass): readable by this user only, gone with `stack down`.
    pgpass = stack_dir(home) / "pgpass"
    pgpass.touch(mode=0o600)
    pgpass.write_text(password + "\n")
    auth = new_auth(home)
    pg_port, pg_data = start_postgres(home, password, logs)
    s3_pid, s3_endpoint = None, None
    try:
        s3_pid, s3_endpoint = start_s3(logs)
        uri, name = start_mlflow(home, pg_port, password, s3_endpoint, logs, auth)
    except BaseException:
        if s3_pid:
            os.killpg(s3_pid, signal.SIGTERM)
        stop_postgres(pg_data)
        docker_local.docker("rm", "-f", container_name(home), check=False)
        raise
    stack = Stack(
        home=str(home),
        tracking_uri=uri,
        s3_endpoint=s3_endpoint,
        artifacts_destination=f"s3://{BUCKET}/artifacts",
        postgres_port=pg_port,
        postgres_data=str(pg_data),
        s3_pid=s3_pid,
        container=name,
        logs=str(logs),
    )
    tmp = stack_dir(home) / "stack.json.tmp"
    tmp.write_text(json.dumps(asdict(stack), indent=2))
    tmp.replace(stack_dir(home) / "stack.json")
    log(
        f"local stack up: MLflow {uri} (container {name}, PostgreSQL 127.0.0.1:{pg_port}, "
        f"artifacts s3://{BUCKET}/artifacts on {s3_endpoint}); stop it with `make stack-down`"
    )
    return stack


def down(home: Path | None = None, log=print) -> bool:
    """Stop the stack and discard its state; False when there was none."""
    home = (home or paths.home()).resolve()
    stack = read(home)
    if stack is None:
        log("no local stack recorded in GANFORGE_HOME")
        return False
    if docker_local.daemon_version():
        docker_local.docker("rm", "-f", stack.container, check=False)
    if is_our_s3(stack.s3_pid):
        os.killpg(stack.s3_pid, signal.SIGTERM)
    stop_postgres(Path(stack.postgres_data))
    (stack_dir(home) / "stack.json").unlink(missing_ok=True)
    (stack_dir(home) / "pgpass").unlink(missing_ok=True)
    (stack_dir(home) / AUTH_FILE).unlink(missing_ok=True)
    log(f"local stack stopped (container {stack.container}); its registry and artifacts are gone")
    return True


def running(home: Path | None = None) -> Stack | None:
    stack = read(home)
    return stack if stack is not None and healthy(stack) else None
