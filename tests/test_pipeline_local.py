"""The DAG end to end through kfp.local (real SubprocessRunner, real MLflow, real Fashion-MNIST).

Two full runs: one with the local defaults (sqlite MLflow, local artifacts), one against a real
`mlflow server` process whose artifacts go to a real S3 server process (moto), with every step
output mirrored to that S3 as well. Both use the tiny profile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PIPELINE_PARAMETERS, cli_env
from servers import mlflow_server, moto_s3_server, s3_environment

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Every credential-looking variable the code names (test_credential_variables_of_the_code_have_sentinels
# keeps this list complete); compiled with these set, the pipeline YAML must hold none of their values.
COMPILE_SENTINELS = {
    name: f"sentinel-{name.lower().replace('_', '-')}-7f3a"
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "KF_PIPELINES_TOKEN",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "PGPASSWORD",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "GANFORGE_RUN_LOCK_TOKEN",
    )
}
CREDENTIAL_NAME = re.compile(
    r"""["']([A-Z][A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|USERNAME|ACCESS_KEY|KEY_ID"""
    r"""|API_KEY|CREDENTIAL)[A-Z0-9_]*)["']"""
)


def _run_pipeline(home: Path, name: str = "dcgan", **params) -> dict:
    from pipelines.local import run_local

    os.environ["GANFORGE_HOME"] = str(home)
    return run_local(name, "tiny", **params)


@pytest.fixture(scope="module")
def local_run(dcgan_tiny_run):
    """The session's tiny dcgan DAG (conftest: the CLI from an empty working directory ``cwd``, to show it
    writes nothing there) with the summary it printed, read back as a dict by the function that made it."""
    from pipelines.local import summarize

    home, cwd, screen, _ = dcgan_tiny_run
    printed = dict(
        re.fullmatch(r" *(\w+): (.*)", ln).groups()
        for ln in screen.split("== ganforge run finished ==\n", 1)[1].splitlines()
        if re.fullmatch(r" *\w+: .*", ln)
    )
    saved = {k: os.environ.get(k) for k in ("GANFORGE_HOME", "MLFLOW_TRACKING_URI")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["GANFORGE_HOME"] = str(home)
    try:
        summary = summarize("dcgan", "tiny", int(printed["model"].rsplit("/", 1)[1]))
        shown = {k: str(v) for k, v in summary.items() if v is not None}  # print_summary leaves out None
        assert shown == {k: printed[k] for k in shown if k in printed}, (shown, printed)
        yield home, summary, cwd
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _artifact_paths(client, run_id: str, path: str = "") -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def _assert_run_recorded(client, summary: dict, cfg_name: str = "dcgan") -> None:
    from ganforge.config import build_config
    from ganforge.train import total_steps

    run = client.get_run(summary["mlflow_run_id"])
    cfg = build_config(cfg_name, "tiny")
    params = run.data.params
    # The run is ended (register finishes it, the exit task confirms it), every step recorded as done.
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    steps = {k.removeprefix("ganforge.step."): v for k, v in run.data.tags.items() if k.startswith("ganforge.step.")}
    expected_steps = {
        "start-run",
        "train",
        "evaluate",
        "register",
        f"prep-{cfg.data.split}",
        f"prep-{cfg.data.reference_split}",
    }
    assert steps == dict.fromkeys(expected_steps, "done"), steps
    assert "ganforge.failed_step" not in run.data.tags and run.data.tags["ganforge.kfp_state"] == "SUCCEEDED"
    # The logged model (MLflow 3 LoggedModel) is in the pipeline's experiment, not in "Default".
    (logged,) = client.search_logged_models(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    assert logged.source_run_id == run.info.run_id and logged.experiment_id == run.info.experiment_id
    assert client.get_experiment(logged.experiment_id).name == cfg_name
    for key, value in cfg.flat().items():  # the whole settled config, flattened
        assert params[key] == str(value), key
    assert params["dataset.train.sha256"]
    assert params.get(f"dataset.{cfg.data.reference_split}.sha256")
    history = client.get_metric_history(run.info.run_id, "loss_d")
    n_steps = total_steps(int(params["dataset.train.count"]), cfg)
    assert [m.step for m in history] == [
        s for s in range(1, n_steps + 1) if s % cfg.train.log_every == 0 or s == n_steps
    ]
    quality = "kid_mean" if cfg.data.kind == "image" else "inception_score"
    assert 0 < run.data.metrics["fid"] < 1000 and quality in run.data.metrics
    artifacts = _artifact_paths(client, run.info.run_id)
    assert any(a.startswith("samples/") and a.endswith(".png") for a in artifacts), artifacts
    assert "config/config.json" in artifacts and "plots/curves.png" in artifacts, artifacts
    if cfg.data.kind == "image":  # the tiny profile keeps one snapshot: a one-point FID curve
        assert {"fid_curve/fid_curve.csv", "fid_curve/fid_curve.png"} <= set(artifacts), artifacts
        curve = client.get_metric_history(run.info.run_id, f"fid_n{cfg.eval.curve_samples}")
        assert [m.step for m in curve] == [n_steps] and 0 < curve[0].value < 1000

    versions = client.search_model_versions(f"name='{cfg_name}'")
    assert len(versions) == 1
    mv = versions[0]
    assert mv.run_id == run.info.run_id
    assert float(mv.tags["fid"]) == pytest.approx(run.data.metrics["fid"])
    for tag in (quality, "dataset_sha256", "git_commit", "config_hash", "kfp_run_id"):
        assert mv.tags.get(tag), tag
    assert mv.tags["config_hash"] == cfg.config_hash()
    assert mv.tags["dataset_sha256"] == params["dataset.train.sha256"]
    assert mv.tags["kfp_run_id"].startswith(f"ganforge-{cfg_name}")
    assert client.get_model_version_by_alias(cfg_name, "champion").version == mv.version
    assert summary["aliases"] == ["champion"]


def test_local_dag_records_run_and_registers_champion(local_run):
    home, summary, cwd = local_run
    from ganforge.platform.tracking import resolve_tracking_uri

    assert summary["tracking_uri"] == f"sqlite:///{home}/mlflow.db" == resolve_tracking_uri(str(home))
    client = _client(summary["tracking_uri"])
    _assert_run_recorded(client, summary)
    assert (home / "pipeline-root").is_dir()
    # Nothing in the working directory (MLflow's "Default" experiment would put ./mlruns there) ...
    assert list(cwd.iterdir()) == []
    # ... the logged model's files are under GANFORGE_HOME, beside the run's artifacts.
    (logged,) = client.search_logged_models(
        experiment_ids=[client.get_run(summary["mlflow_run_id"]).info.experiment_id]
    )
    assert logged.artifact_location.startswith((home / "mlartifacts" / "dcgan").as_uri()), logged.artifact_location
    assert any((home / "mlartifacts" / "dcgan").glob(f"models/{logged.model_id}/artifacts/MLmodel"))


def test_champion_loads_in_a_fresh_process(local_run):
    home, summary, _ = local_run
    code = (
        "import mlflow.pytorch, torch; m = mlflow.pytorch.load_model('models:/dcgan@champion'); "
        "print(tuple(m(torch.randn(5, 100)).shape))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(MLFLOW_TRACKING_URI=summary["tracking_uri"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.stdout.strip().splitlines()[-1] == "(5, 1, 28, 28)"


def test_registry_show_and_manual_promote_cli(local_run):
    home, summary, _ = local_run
    env = cli_env(GANFORGE_HOME=str(home))
    shown = subprocess.run(
        [sys.executable, "-m", "ganforge.cli", "registry", "show", "dcgan"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "champion" in shown and "1" in shown
    refused = subprocess.run(
        [sys.executable, "-m", "ganforge.cli", "promote", "dcgan", "7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "7" in refused.stderr


def test_dag_against_mlflow_server_with_s3_artifacts(tmp_path):
    """wgan-gp, with MLflow served by a real `mlflow server` process whose artifacts go to a real S3
    server (moto), and every step output mirrored to that S3."""
    with moto_s3_server(bucket="ganforge-artifacts") as s3, s3_environment(s3):
        with mlflow_server(tmp_path / "mlflow", artifacts_destination=s3.uri("mlflow")) as uri:
            saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "GANFORGE_ARTIFACT_ROOT", "GANFORGE_HOME")}
            os.environ["MLFLOW_TRACKING_URI"] = uri
            os.environ["GANFORGE_ARTIFACT_ROOT"] = s3.uri("ganforge")
            try:
                summary = _run_pipeline(tmp_path / "home", "wgan-gp")
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            assert summary["tracking_uri"] == uri
            client = _client(uri)
            _assert_run_recorded(client, summary, "wgan-gp")
            assert client.get_metric_history(summary["mlflow_run_id"], "gp"), "the gradient penalty is logged"
            keys = [
                o["Key"]
                for page in s3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
                for o in page.get("Contents", [])
            ]
            run_id = summary["mlflow_run_id"]
            # MLflow's artifacts (samples, plots, the logged model) went through the server into S3 ...
            assert any(k.startswith("mlflow/") and k.endswith(".png") for k in keys), keys
            assert any(k.startswith("mlflow/") and "MLmodel" in k for k in keys), keys
            # ... and every step's output was mirrored there, each directory sealed by its marker.
            for name in ("dataset-train", "dataset-test", "model"):
                assert f"ganforge/runs/{run_id}/{name}/_COMPLETE" in keys, name
            assert f"ganforge/runs/{run_id}/model/checkpoint.pt" in keys
            assert f"ganforge/runs/{run_id}/metrics.json" in keys
            assert f"ganforge/runs/{run_id}/fid_curve/fid_curve.csv" in keys
    assert not (tmp_path / "home" / "mlflow.db").exists(), "with a server URI nothing goes to the local sqlite"


def test_wavegan_dag_generates_audio_and_registers(tmp_path, monkeypatch):
    """The audio pipeline: synthesised SC09 digits → WaveGAN → classifier IS/FD → registry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GANFORGE_HOME", str(tmp_path / "home"))
    summary = _run_pipeline(tmp_path / "home", "wavegan")
    client = _client(summary["tracking_uri"])
    _assert_run_recorded(client, summary, "wavegan")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["inception_score"] >= 1.0 and run.data.metrics["real_inception_score"] > 2.0
    artifacts = _artifact_paths(client, summary["mlflow_run_id"])
    assert any(a.endswith(".wav") for a in artifacts), artifacts
    # the evaluate step's listening material: spectrogram grids and WAVs of the scored samples
    assert {"eval_audio/generated.png", "eval_audio/real.png", "eval_audio/wavs/sample_0007.wav"} <= set(artifacts)


def test_every_pipeline_compiles_and_loads_back(tmp_path, monkeypatch):
    """Compiled with credentials in the environment: none of their values may reach the YAML."""
    from kfp import components

    from ganforge.config import PRESETS
    from pipelines.compile import compile_pipeline

    for k, v in COMPILE_SENTINELS.items():
        monkeypatch.setenv(k, v)
    for name in PRESETS:
        path = compile_pipeline(name, tmp_path / f"{name}.yaml")
        text = path.read_text()
        leaked = [k for k, v in COMPILE_SENTINELS.items() if v in text]
        assert not leaked, (name, leaked)
        loaded = components.load_component_from_file(str(path))
        assert loaded.name == f"ganforge-{name}"
        docs = list(yaml.safe_load_all(text))
        root_params = set(docs[0]["root"]["inputDefinitions"]["parameters"])
        assert root_params == PIPELINE_PARAMETERS
        # The body runs inside a dsl.ExitHandler whose exit task ends the MLflow run.
        root_tasks = docs[0]["root"]["dag"]["tasks"]
        (handler,) = [t for t in root_tasks.values() if t["componentRef"]["name"].startswith("comp-exit-handler")]
        assert root_tasks["end-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
        tasks = docs[0]["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
        assert {"start-run", "register"} <= set(tasks)
        # every family has the same tasks: what differs is inside the steps (steps.FAMILIES)
        train_task = "train"
        assert {"train", "evaluate"} <= set(tasks), sorted(tasks)
        platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        train_exec = platform[f"exec-{train_task}"]
        assert {s["secretName"] for s in train_exec["secretAsEnv"]} >= {"ganforge-s3"}
        assert train_exec["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        resources = docs[0]["deploymentSpec"]["executors"][f"exec-{train_task}"]["container"]["resources"]
        assert resources["accelerator"]["resourceCount"] in ("1", 1)
        # on a cluster, training resumes on a retry and prep/register outlive an S3 or server hiccup
        assert tasks[train_task]["retryPolicy"]["maxRetryCount"] == 2
        assert [t for t in tasks if t.startswith("prep-") and tasks[t]["retryPolicy"]["maxRetryCount"] == 2]


def test_a_local_run_is_built_without_retries(tmp_path):
    """kfp.local honours retry policies, backoff included: on this machine a failure is the same on the next
    attempt, so the DAG `make run` builds has none (the failed-run test sees prep-test run once)."""
    from kfp import compiler

    from ganforge.config import build_config
    from pipelines.factory import build_pipeline
    from pipelines.kube import ClusterSettings

    for name in ("dcgan", "cyclegan"):
        local = ClusterSettings.for_local(build_config(name, "tiny"))
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(name, "tiny", local), package_path=str(path))
        text = path.read_text()
        assert "retryPolicy" not in text and "exec-train" in text, name


def credential_variables_of_the_code() -> dict[str, list[str]]:
    """Credential-looking names (…TOKEN, …SECRET…, …PASSWORD, …USERNAME, …ACCESS_KEY…, …KEY_ID, …CREDENTIAL…)
    quoted anywhere in src/, pipelines/ and components/: what the code reads, forwards or refers to."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for d in ("src", "pipelines", "components") for p in (ROOT / d).rglob("*.py")):
        for name in CREDENTIAL_NAME.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_credential_variables_of_the_code_have_sentinels():
    found = credential_variables_of_the_code()
    assert {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "KF_PIPELINES_TOKEN"} <= set(found)  # the scan works
    missing = {name: files for name, files in found.items() if name not in COMPILE_SENTINELS}
    assert not missing, f"credential variables the code names, without a sentinel in COMPILE_SENTINELS: {missing}"
