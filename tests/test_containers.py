"""The images built here for real, the DAG's tasks in containers, the MLflow server image on PostgreSQL.

These need a Docker daemon (``make images-local`` starts dockerd as root) and PostgreSQL's
server binaries. Skip them locally with ``-m "not docker"``; CI (CI=true) runs them and fails
when the daemon is missing instead of skipping. The cold image build itself runs in
``.ci/run`` (``make images-local``), so the build here reuses its cached layers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail_in_ci
from pipelines import docker_local, stack

ROOT = Path(__file__).resolve().parents[1]
MAKE_TIMEOUT_S = 3600
# The first test builds the images in its fixture (cached in CI: ~5 min; cold up to MAKE_TIMEOUT_S).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(MAKE_TIMEOUT_S + 600)]
# Credential-looking variables in the build's environment: none of their values may reach an image.
SENTINELS = {
    name: f"sentinel-{name.lower()}-do-not-bake"
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "KF_PIPELINES_TOKEN",
        "PGPASSWORD",
    )
}


def require_docker() -> None:
    if docker_local.daemon_version():
        return
    if os.geteuid() == 0 and shutil.which("dockerd"):
        docker_local.ensure_daemon(Path("/tmp/ganforge-dockerd"))
        return
    skip_or_fail_in_ci("no Docker daemon here (run `make images-local` as root; .ci/run does, and runs these tests)")


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def make(*args: str, env: dict, timeout: float = MAKE_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docker-home")


@pytest.fixture(scope="module")
def make_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "GANFORGE_"))}
    env.update(GANFORGE_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def built(make_env) -> subprocess.CompletedProcess:
    """`make images-local` exactly as the README shows it, with credential sentinels in its environment."""
    require_docker()
    proc = make("images-local", env={**make_env, **SENTINELS})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def local_stack(built, home):
    """The local stack of the module's GANFORGE_HOME, started through the CLI the README names
    (`python -m pipelines stack up`); `make stack-down` (as the README shows) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GANFORGE_"))}
    up = subprocess.run(
        [sys.executable, "-m", "pipelines", "stack", "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "GANFORGE_HOME": str(home)},
    )
    assert up.returncode == 0, up.stderr[-3000:]
    running = stack.running(home)
    assert running is not None and up.stdout.strip() == running.tracking_uri
    status = subprocess.run(
        [sys.executable, "-m", "pipelines", "stack", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "GANFORGE_HOME": str(home)},
    )
    assert status.returncode == 0 and json.loads(status.stdout)["container"] == running.container
    # The server runs basic-auth: anonymous calls are refused, this process uses the pipeline's user.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.delenv(key, raising=False)
        with pytest.raises(MlflowException, match="401|nauthenticated|credentials"):
            MlflowClient(running.tracking_uri).search_experiments()
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, running.env()[key])
        yield running
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GANFORGE_"))}
    proc = make("stack-down", env={**env, "GANFORGE_HOME": str(home)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert stack.read(home) is None


def inspect(image: str) -> dict:
    return json.loads(docker_local.docker("image", "inspect", image).stdout)[0]


def test_images_local_labels_both_images_with_this_checkout(built):
    head = git_head()
    for target, image in docker_local.IMAGES.items():
        digest = docker_local.source_digest(target=target)
        labels = inspect(image)["Config"]["Labels"]
        assert labels[docker_local.REVISION_LABEL] == head, image
        assert labels[docker_local.DIGEST_LABEL] == digest, image
        assert docker_local.check_fresh(image)[docker_local.DIGEST_LABEL] == digest
    assert inspect(docker_local.CPU_IMAGE)["Config"]["User"] == "1000:1000"
    assert inspect(docker_local.MLFLOW_IMAGE)["Config"]["User"] == "1000:1000"


def test_the_cpu_image_runs_this_checkouts_ganforge_as_non_root(built):
    script = (
        "import hashlib, os, pathlib, ganforge, torch, kfp, mlflow; "
        "root = pathlib.Path(ganforge.__file__).parent; "
        "print(os.getuid(), os.environ['GANFORGE_GIT_SHA'], torch.__version__, kfp.__version__); "
        "print(hashlib.sha256(b''.join(p.read_bytes() for p in sorted(root.rglob('*.py')))).hexdigest())"
    )
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", docker_local.CPU_IMAGE, "python3", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    first, files_digest = proc.stdout.strip().splitlines()
    uid, sha, torch_version, kfp_version = first.split()
    assert uid == "1000" and sha == git_head()
    assert torch_version.startswith("2.14.1") and kfp_version == "2.17.0"
    src = ROOT / "src" / "ganforge"
    import hashlib

    local = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.rglob("*.py")))).hexdigest()
    assert files_digest == local, "the image's ganforge modules differ from this checkout's src/ganforge"


def test_no_credential_value_in_image_config_or_layer_history(built):
    for image in (docker_local.CPU_IMAGE, docker_local.MLFLOW_IMAGE, docker_local.BASE_IMAGE):
        text = json.dumps(inspect(image))
        text += docker_local.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        for name, value in SENTINELS.items():
            assert value not in text, f"{name}'s value is baked into {image}"
        env = inspect(image)["Config"]["Env"] or []
        assert not [e for e in env if e.split("=", 1)[0] in SENTINELS], f"{image} sets a credential variable"


def test_stale_image_is_refused(built, tmp_path):
    for rel in ("images/Dockerfile", "images/constraints.txt", "pyproject.toml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert docker_local.source_digest(tmp_path) == docker_local.source_digest()
    docker_local.check_fresh(docker_local.CPU_IMAGE, root=tmp_path)
    with open(tmp_path / "src" / "ganforge" / "config.py", "a") as f:
        f.write("\n# changed\n")
    with pytest.raises(docker_local.ImageError, match=r"is stale: .*rebuild it with `make images-local`"):
        docker_local.check_fresh(docker_local.CPU_IMAGE, root=tmp_path)


def test_a_failed_build_names_its_stage(built, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {docker_local.BASE_IMAGE} AS fine\nRUN true\n"
        f"FROM fine AS broken-stage\nRUN echo about to fail && false\n"
    )
    with pytest.raises(docker_local.ImageError, match=r"build failed in stage `broken-stage`"):
        docker_local.build_target(
            "broken-stage",
            "localhost/ganforge-broken:test",
            {},
            tmp_path / "build.log",
            dockerfile=tmp_path / "Dockerfile",
            context=tmp_path,
            timeout_s=300,
        )


def test_mlflow_server_image_on_postgres_keeps_runs_in_postgres_and_artifacts_in_s3(local_stack, tmp_path):
    import boto3
    from mlflow import MlflowClient

    client = MlflowClient(local_stack.tracking_uri)
    exp = client.create_experiment("stack-check")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "fid", 12.5)
    (tmp_path / "note.txt").write_text("hello s3")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    # The run is a row in the stack's PostgreSQL …
    password = (Path(local_stack.home) / "stack" / "pgpass").read_text().strip()
    query = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(local_stack.postgres_port),
            "-U",
            stack.PG_USER,
            "-d",
            stack.PG_DB,
            "-tAc",
            f"SELECT value FROM metrics WHERE run_uuid = '{run.info.run_id}'",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PGPASSWORD=password),
    )
    assert query.returncode == 0, query.stderr
    assert float(query.stdout.strip()) == 12.5
    # … and its artifact an object in the S3 server, written by the server (the client has no S3 keys).
    s3 = boto3.client(
        "s3",
        endpoint_url=local_stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.BUCKET).get("Contents", [])]
    assert [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/note.txt")], keys
    # The server runs as the image's non-root user, and no password is on its command line.
    top = docker_local.docker("top", local_stack.container, "-o", "pid,uid,args").stdout
    assert "mlflow" in top and password not in top and stack.S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in top
    auth = stack.read_auth(Path(local_stack.home))
    assert "--app-name basic-auth" in top and auth["admin_password"] not in top and auth["password"] not in top
    assert {line.split()[1] for line in top.splitlines()[1:]} == {"1000"}, top


def test_dag_tasks_run_in_their_own_containers_and_the_champion_generates(local_stack, make_env, home):
    proc = make("run", "PIPELINE=dcgan", "PROFILE=tiny", "RUNNER=docker", env=make_env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "champion" in proc.stdout, proc.stdout[-2000:]
    from mlflow import MlflowClient

    client = MlflowClient(local_stack.tracking_uri)
    version = client.get_model_version_by_alias("dcgan", "champion")
    tags = client.get_run(version.run_id).data.tags
    tasks = sorted({k.split(".")[2] for k in tags if k.startswith("ganforge.task.")})
    assert {"start_run", "prep_data-train", "prep_data-test", "train", "evaluate", "register"} <= set(tasks), tasks
    containers = set()
    for task in tasks:
        facts = {k.rsplit(".", 1)[1]: v for k, v in tags.items() if k.startswith(f"ganforge.task.{task}.")}
        assert facts["container"] == "docker", (task, facts)
        assert facts["uid"] != "0" and facts["uid"] == "1000", (task, facts)
        # cgroup v1 under dockerd: /docker/<64-hex container id> (the host network shares the host name)
        assert re.fullmatch(r"/docker/[0-9a-f]{64}", facts["cgroup"]), (task, facts)
        assert facts["image_revision"] == git_head(), (task, facts)
        containers.add(facts["cgroup"])
    assert len(containers) == len(tasks), f"tasks shared a container: {containers}"
    assert Path("/proc/self/cgroup").read_text().find("/docker/") == -1, "this test itself runs in no container"
    # `make generate` (as the README shows it) loads the champion through the stack's MLflow server.
    out = ROOT / "build" / "generated" / "dcgan"
    shutil.rmtree(out, ignore_errors=True)
    gen = make("generate", "PIPELINE=dcgan", env=make_env, timeout=600)
    assert gen.returncode == 0, gen.stdout[-3000:] + gen.stderr[-3000:]
    assert (out / "grid.png").exists() or list(out.glob("*.png")), sorted(p.name for p in out.iterdir())
