"""Training on the cluster through S3: the pipeline's train step with launcher trainjob/pytorchjob,
and ``ganforge train`` with ``s3://`` data and output (SIGKILL, then ``--resume`` from S3).

Real here: a moto S3 server process that checks access keys; the ``kubernetes`` client talking
HTTP (through a kubeconfig) to a stand-in API server; the job manifests' own container commands
run as local processes with the variables the engine would inject (``torchrun``, then
``ganforge train --data s3://… --out s3://…``); training, checkpoint uploads and downloads.

Stand-in: the Kubernetes API server and the TrainJob / PyTorchJob controllers
(``kube_standin.ExecutingKubeStandin``). No cluster runs here: images, scheduling, resources,
volumes and pod restarts are not exercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from ganforge.checkpoint import load_generator, read_checkpoint
from ganforge.config import build_config
from ganforge.platform import s3 as storage
from ganforge.platform import steps
from ganforge.platform.cluster_jobs import ClusterSpecError, ClusterTrainingError
from kube_standin import ExecutingKubeStandin
from servers import s3_fixtures

moto_server, s3 = s3_fixtures(validate_credentials=True)

IMAGE = "registry.example/ganforge-gpu:test"
NAMESPACE = "ml"


def _kubeconfig(path: Path, host: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "standin",
                "clusters": [{"name": "standin", "cluster": {"server": host}}],
                "users": [{"name": "standin", "user": {"token": "standin-token"}}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
            }
        )
    )
    return path


@pytest.fixture
def cluster(s3, tmp_path, monkeypatch):
    """The stand-in API server that runs jobs, the Secret ganforge-s3 holding the server's keys,
    and the step's environment as the ganforge-env ConfigMap would set it."""
    secrets = {"ganforge-s3": {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}}
    with ExecutingKubeStandin(tmp_path / "pods", secrets=secrets) as kube:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: use the kubeconfig
        monkeypatch.delenv("GANFORGE_GPUS_PER_NODE", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", kube.host)))
        monkeypatch.setenv("GANFORGE_ARTIFACT_ROOT", s3.uri(tmp_path.name, "artifacts"))
        monkeypatch.setenv("GANFORGE_IMAGE", IMAGE)
        monkeypatch.setenv("GANFORGE_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("GANFORGE_JOB_POLL_S", "0.3")
        yield kube


def _container(m: dict) -> dict:
    if m["kind"] == "TrainJob":
        return m["spec"]["trainer"]
    return m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _objects(server, prefix: str) -> list[str]:
    return storage.list_prefix(server.uri(prefix))


@pytest.mark.slow  # runs torchrun and ganforge train in subprocesses
def test_train_step_runs_a_trainjob_on_the_prep_mirror_and_fetches_the_checkpoint(
    cluster, s3, ganforge_home, monkeypatch, tmp_path
):
    from ganforge.platform import tracking

    # The pods get the tracking URI and run id from the step's environment, as from ganforge-env.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    cfg = build_config("dcgan", "tiny", {"train": {"launcher": "trainjob", "max_steps": 4, "checkpoint_every": 2}})
    run_id = tracking.start_pipeline_run(cfg)
    data_dir, out_dir = tmp_path / "dataset", tmp_path / "model"
    prep = steps.prep_step(cfg.to_json(), "train", str(data_dir), run_id)  # mirrors to ARTIFACT_ROOT/runs/RUN_ID/
    run_prefix = f"{tmp_path.name}/artifacts/runs/{run_id}"
    assert prep["mirror_uri"] == s3.uri(run_prefix, "dataset-train")

    result = steps.train_step(
        cfg.to_json(), str(data_dir), str(out_dir), run_id, samples_path=str(tmp_path / "grid.png")
    )

    assert (result["step"], result["epoch"]) == (4, 1) and result["job"]["phase"] == "Succeeded"
    ckpt = read_checkpoint(out_dir / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["launcher"] == "trainjob"
    G, _ = load_generator(out_dir / "checkpoint.pt")
    assert G(torch.randn(2, cfg.model.nz)).shape == (2, 1, 28, 28)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # The job trained on the prep step's mirror; the step uploaded no copy of its own.
    [m] = cluster.recorded.created
    assert m["kind"] == "TrainJob" and m["metadata"]["namespace"] == NAMESPACE
    command = _container(m)["command"][2]
    assert f"--data {prep['mirror_uri']} --out {s3.uri(run_prefix, 'train-job')} --resume" in command
    assert not _objects(s3, f"{run_prefix}/train-data")
    # Keys reach the pods only by reference to the Secret; the endpoint as a plain value.
    env = {e["name"]: e for e in _container(m)["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "ganforge-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert env["AWS_ENDPOINT_URL"]["value"] == s3.endpoint_url
    assert s3.secret_access_key not in json.dumps(m) and s3.access_key_id not in json.dumps(m)
    assert cluster.recorded.deleted == [m["metadata"]["name"]]
    # The run directory in S3 is complete, and what the step downloaded is that run.
    assert storage.exists(s3.uri(run_prefix, "train-job", storage.COMPLETE_MARKER))
    remote = read_checkpoint(
        storage.download_file(s3.uri(run_prefix, "train-job", "checkpoint.pt"), tmp_path / "remote.pt")
    )
    assert _state_equal(remote["G_ema"], ckpt["G_ema"])
    # Rank 0 in the pod logged the training curves into the pipeline's MLflow run.
    assert env["GANFORGE_MLFLOW_RUN_ID"]["value"] == run_id
    assert [step for step, _ in tracking.metric_histories(run_id)["loss_d"]] == [2, 4]


@pytest.mark.slow  # runs torchrun and ganforge train in subprocesses
def test_train_step_runs_a_two_node_pytorchjob_and_uploads_the_data_itself(cluster, s3, fashion_train, tmp_path):
    cfg = build_config("gan", "tiny", {"train": {"launcher": "pytorchjob", "nnodes": 2, "max_steps": 4}})
    result = steps.train_step(cfg.to_json(), str(fashion_train), str(tmp_path / "model"))

    assert result["step"] == 4
    [m] = cluster.recorded.created
    assert m["kind"] == "PyTorchJob" and m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    run_prefix = f"{tmp_path.name}/artifacts/runs/no-run"
    assert s3.uri(run_prefix, "train-data") in _container(m)["command"][2]  # no prep mirror: the step uploaded
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "pods").glob("*/pod.log")}
    assert len(logs) == 2, logs.keys()
    master = next(text for name, text in logs.items() if "master" in name)
    assert "step 4/4" in master  # rank 0 (on the master node) logs; both nodes exited 0
    worker = next(text for name, text in logs.items() if "master" not in name)
    assert "rank 0 of 2: trained steps 1-4" in master and "rank 1 of 2: trained steps 1-4" in worker, logs
    ckpt = read_checkpoint(tmp_path / "model" / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["nnodes"] == 2


def test_cluster_launcher_without_an_s3_artifact_root_is_a_clear_error(cluster, monkeypatch, tmp_path):
    cfg = build_config("dcgan", "tiny", {"train": {"launcher": "trainjob"}})
    for root in (None, str(tmp_path / "local-root")):
        if root is None:
            monkeypatch.delenv("GANFORGE_ARTIFACT_ROOT")
        else:
            monkeypatch.setenv("GANFORGE_ARTIFACT_ROOT", root)
        with pytest.raises(ClusterSpecError, match="GANFORGE_ARTIFACT_ROOT.*s3://.*ConfigMap ganforge-env"):
            steps.train_step(cfg.to_json(), str(tmp_path / "data"), str(tmp_path / "model"))
    monkeypatch.setenv("GANFORGE_ARTIFACT_ROOT", "s3://bucket/x")
    monkeypatch.delenv("GANFORGE_IMAGE")
    with pytest.raises(ClusterSpecError, match="GANFORGE_IMAGE is not set"):
        steps.train_step(cfg.to_json(), str(tmp_path / "data"), str(tmp_path / "model"))
    assert cluster.recorded.created == []


@pytest.mark.slow  # runs torchrun and ganforge train in subprocesses
def test_wrong_keys_in_the_secret_fail_the_job_with_the_pod_logs(cluster, s3, fashion_train, tmp_path):
    cluster.secrets["ganforge-s3"]["AWS_ACCESS_KEY_ID"] = "AKIANOTAKEY0000000000"
    cfg = build_config("gan", "tiny", {"train": {"launcher": "trainjob", "max_steps": 2}})
    with pytest.raises(ClusterTrainingError) as err:
        steps.train_step(cfg.to_json(), str(fashion_train), str(tmp_path / "model"))
    msg = str(err.value)
    assert "failed" in msg and "exited with code" in msg
    assert "InvalidAccessKeyId" in msg and "AWS_ACCESS_KEY_ID" in msg  # from the pod's log tail
    assert not (tmp_path / "model").exists()


def _train_cmd(cfg_path: Path, data_uri: str, out_uri: str, resume: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ganforge.cli",
        "train",
        "--config-json",
        str(cfg_path),
        "--data",
        data_uri,
        "--out",
        out_uri,
    ] + (["--resume"] if resume else [])


def _remote_checkpoint(server, prefix: str, tmp_path: Path, name: str) -> dict:
    return read_checkpoint(storage.download_file(server.uri(prefix, "checkpoint.pt"), tmp_path / f"{name}.pt"))


@pytest.mark.slow  # runs torchrun and ganforge train in subprocesses
def test_cli_on_s3_survives_sigkill_and_resumes_from_the_s3_checkpoint(s3, fashion_train, tmp_path):
    """Uninterrupted s3 run vs. a run SIGKILLed after its first upload and resumed on a fresh disk."""
    cfg = build_config("dcgan", "tiny", {"train": {"epochs": 4, "checkpoint_every": 4, "max_steps": None}})
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(cfg.to_json())
    base = tmp_path.name
    data_uri = storage.upload_dir(fashion_train, s3.uri(base, "data"))
    run = subprocess.run(
        _train_cmd(cfg_path, data_uri, s3.uri(base, "ref")),
        env=cli_env(GANFORGE_CACHE=str(tmp_path / "cache-ref")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1])["checkpoint"] == s3.uri(base, "ref", "checkpoint.pt")

    # A finished run once lived under this prefix: its marker must go as soon as training rewrites it.
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "checkpoint.pt").write_bytes(b"an older run")
    storage.upload_dir(tmp_path / "stale", s3.uri(base, "run"))
    killed_cache = tmp_path / "cache-killed"
    proc = subprocess.Popen(
        _train_cmd(cfg_path, data_uri, s3.uri(base, "run")),
        env=cli_env(GANFORGE_CACHE=str(killed_cache)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while (
        storage.exists(s3.uri(base, "run", storage.COMPLETE_MARKER)) and proc.poll() is None and time.time() < deadline
    ):
        time.sleep(0.02)
    stale_size = len(b"an older run")
    while (
        s3.client().head_object(Bucket=s3.bucket, Key=f"{base}/run/checkpoint.pt")["ContentLength"] == stale_size
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _remote_checkpoint(s3, f"{base}/run", tmp_path, "killed")["step"]
    assert 0 < killed_at < 64, "the run finished before it was killed; the test proved nothing"
    assert not storage.exists(s3.uri(base, "run", storage.COMPLETE_MARKER))  # readers can tell it is unfinished

    # A replacement pod: a fresh local disk, S3 is all it has.
    resumed = subprocess.run(
        _train_cmd(cfg_path, data_uri, s3.uri(base, "run"), resume=True),
        env=cli_env(GANFORGE_CACHE=str(tmp_path / "cache-new")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {s3.uri(base, 'run', 'checkpoint.pt')} at step {killed_at}" in resumed.stderr
    assert "step 2/64" not in resumed.stderr  # it did not start over
    ref, out = (_remote_checkpoint(s3, f"{base}/{p}", tmp_path, p) for p in ("ref", "run"))
    assert out["step"] == ref["step"] == 4 * 512 // cfg.train.batch_size
    for key in ("G", "G_ema", "D"):
        assert _state_equal(ref[key], out[key]), f"{key} differs after resume (killed at step {killed_at})"
    local = storage.download_prefix(s3.uri(base, "run"), tmp_path / "downloaded")  # needs the _COMPLETE marker
    assert sorted(p.name for p in (local / "samples").glob("*.png")) == [f"epoch_00{e}.png" for e in (1, 2, 3, 4)]
