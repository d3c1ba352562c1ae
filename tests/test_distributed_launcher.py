"""Cluster launcher: manifests checked against the vendored CRD schemas, launch/watch against a
real HTTP stand-in API server (tests/kube_standin.py; no cluster runs here), and the container
command run for real through torchrun with the engine's environment."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from ganforge.config import PRESETS, build_config
from ganforge.launch import torchrun_command
from ganforge.platform.cluster_jobs import (
    CONFIG_ENV,
    ClusterSpecError,
    ClusterTrainingError,
    ClusterTrainSpec,
    job_name,
    job_phase,
    launch_and_watch,
    manifest,
    pytorchjob_manifest,
    spec_from_config,
    train_command,
    trainjob_manifest,
)
from kube_standin import KubeStandin, Scenario

SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.32.0"
SECRET_VALUE = "s3cr3t-do-not-leak"
ENGINES = ("trainjob", "pytorchjob")


def _crd(engine: str) -> dict:
    name = {"trainjob": "trainjob_v1alpha1.yaml", "pytorchjob": "pytorchjob_v1.yaml"}[engine]
    return yaml.safe_load((SCHEMAS / name).read_text())


# Quantity pattern as the vendored PyTorchJob CRD spells it (runPolicy.schedulingPolicy.minResources).
QUANTITY_PATTERN = _crd("pytorchjob")["openAPIV3Schema"]["properties"]["spec"]["properties"]["runPolicy"]["properties"][
    "schedulingPolicy"
]["properties"]["minResources"]["additionalProperties"]["pattern"]


def _strict(schema: dict) -> dict:
    """CRD schema → JSON Schema that rejects unknown fields where the CRD would prune them."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-")}
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not schema.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    return s


def _core_parts(schema: dict, value, path: str = ""):
    """Yield (path, core type, value) for every part of ``value`` the CRD types as a Kubernetes core type."""
    if "x-core-type" in schema:
        yield path, schema["x-core-type"], value
        return
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from _core_parts(sub, v, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from _core_parts(schema["items"], v, f"{path}[{i}]")


_K8S_DEFS = None


def _core_validator(core_type: str) -> jsonschema.protocols.Validator:
    global _K8S_DEFS
    if _K8S_DEFS is None:
        root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
        _K8S_DEFS = json.loads((root / "_definitions.json").read_text())
        # The CRDs embed quantities with this pattern (controller-gen); kubernetes-validate's copy has none.
        _K8S_DEFS["$defs"]["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}]
        }
    schema = {"$schema": _K8S_DEFS["$schema"], "$defs": _K8S_DEFS["$defs"], "$ref": f"#/$defs/{core_type}"}
    return jsonschema.validators.validator_for(schema)(schema)


def _cel_checks(crd_schema: dict, obj: dict) -> list[str]:
    """The CRD's top-level CEL rules, each known one evaluated in Python; an unknown rule fails the test."""
    known = {
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": lambda o: (
            re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", o["metadata"]["name"]) is not None
        ),
        "size(self.metadata.name) <= 63": lambda o: len(o["metadata"]["name"]) <= 63,
    }
    errors = []
    for v in crd_schema.get("x-kubernetes-validations", []):
        assert v["rule"] in known, f"CEL rule not evaluated by this test: {v['rule']}"
        if not known[v["rule"]](obj):
            errors.append(v["message"])
    return errors


def validate_manifest(engine: str, obj: dict) -> list[str]:
    """Every error the vendored CRD schema (plus Kubernetes 1.32 core types) finds in ``obj``."""
    crd = _crd(engine)
    schema = crd["openAPIV3Schema"]
    assert obj["apiVersion"] == f"{crd['group']}/{crd['version']}" and obj["kind"] == crd["kind"]
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(_strict(schema)).iter_errors(obj)
    ]
    for path, core_type, value in _core_parts(schema, obj):
        errors += [
            f"{path}.{'.'.join(map(str, e.path))}: {e.message}" for e in _core_validator(core_type).iter_errors(value)
        ]
    return errors + _cel_checks(schema, obj)


def _spec(engine: str, preset: str = "dcgan", **kw) -> ClusterTrainSpec:
    cfg = build_config(preset, "full")
    defaults = dict(
        image="registry.example/ganforge:0.1.0",
        namespace="ml",
        engine=engine,
        data_uri="s3://ganforge/data/fmnist",
        out_uri="s3://ganforge/runs/x",
        gpus_per_node=2,
        nnodes=2,
        env_from_secrets={
            "AWS_ACCESS_KEY_ID": ("ganforge-s3", "access-key"),
            "AWS_SECRET_ACCESS_KEY": ("ganforge-s3", "secret-key"),
        },
        env={"AWS_ENDPOINT_URL": "http://minio.ml:9000"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"nvidia.com/gpu.present": "true"},
        service_account="ganforge-runner",
    )
    defaults.update(kw)
    return spec_from_config(cfg, **defaults)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("nnodes", [1, 2])
def test_manifest_of_every_preset_passes_the_vendored_crd_schema(engine, preset, nnodes):
    spec = _spec(
        engine, preset, nnodes=nnodes, pvc_mounts={"ganforge-data": "/mnt/shared"}, out_uri="/mnt/shared/runs/x"
    )
    assert validate_manifest(engine, manifest(spec)) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_schema_check_catches_broken_manifests(engine):
    good = manifest(_spec(engine))
    broken = []
    m = copy.deepcopy(good)
    m["spec"]["unknownField"] = 1
    broken.append(m)
    if engine == "trainjob":  # only TrainJob's CRD constrains metadata.name (CEL rules)
        m = copy.deepcopy(good)
        m["metadata"]["name"] = "9-starts-with-digit"
        broken.append(m)
        m = copy.deepcopy(good)
        del m["spec"]["runtimeRef"]
        broken.append(m)
        m = copy.deepcopy(good)
        m["spec"]["trainer"]["env"][0]["valueFromm"] = {}
        broken.append(m)
        m = copy.deepcopy(good)
        m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
            "spec"
        ]["template"]["spec"]["hostNetwork"] = True
        broken.append(m)
    else:
        m = copy.deepcopy(good)
        del m["spec"]["pytorchReplicaSpecs"]
        broken.append(m)
        m = copy.deepcopy(good)
        m["spec"]["nprocPerNode"] = 2
        broken.append(m)
        m = copy.deepcopy(good)
        m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "cpu"
        ] = "four"
        broken.append(m)
    for m in broken:
        assert validate_manifest(engine, m), f"not caught: {json.dumps(m)[:200]}"


def test_pytorchjob_manifest_shape():
    m = pytorchjob_manifest(_spec("pytorchjob", nnodes=4, gpus_per_node=4, timeout_s=7200))
    reps = m["spec"]["pytorchReplicaSpecs"]
    assert (reps["Master"]["replicas"], reps["Worker"]["replicas"]) == (1, 3)
    assert m["spec"]["nprocPerNode"] == "4"
    assert m["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200
    assert m["spec"]["runPolicy"]["cleanPodPolicy"] == "None"  # logs survive until we delete the job
    for r in reps.values():
        assert r["restartPolicy"] == "OnFailure"
        pod = r["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
        assert pod["serviceAccountName"] == "ganforge-runner"
    assert (
        "ttlSecondsAfterFinished"
        not in pytorchjob_manifest(_spec("pytorchjob", keep_on_finish=True))["spec"]["runPolicy"]
    )
    single = pytorchjob_manifest(_spec("pytorchjob", nnodes=1))
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_trainjob_manifest_shape():
    m = trainjob_manifest(_spec("trainjob", nnodes=4, gpus_per_node=8))
    assert m["spec"]["runtimeRef"]["name"] == "torch-distributed"
    t = m["spec"]["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (4, 8)
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert not any(e["name"].startswith("PET_") for e in t["env"])  # the torch plugin rejects those
    node = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert node["name"] == "node"
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["name"] == "node"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu_only = trainjob_manifest(_spec("trainjob", gpus_per_node=0, nnodes=1))
    assert "nvidia.com/gpu" not in cpu_only["spec"]["trainer"]["resourcesPerNode"]["limits"]


@pytest.mark.parametrize("engine", ENGINES)
def test_manifests_reference_secrets_and_never_hold_their_values(engine, monkeypatch):
    """The launching step holds the keys in its environment (from the Secrets); the job it builds from that
    environment (cluster_train.job_environment / job_secret_refs, as launch_cluster_training does) refers
    to them and never carries their values."""
    from ganforge.platform import cluster_train

    secrets = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", *cluster_train.MLFLOW_SECRET_KEYS)
    for name in cluster_train.FORWARDED_ENV:
        monkeypatch.setenv(name, f"forwarded-{name}")
    for name in secrets:
        monkeypatch.setenv(name, f"{SECRET_VALUE}-{name}")
    m = manifest(
        _spec(
            engine,
            env={**cluster_train.job_environment("run-1"), "AWS_ENDPOINT_URL": "http://minio.ml:9000"},
            env_from_secrets={
                **cluster_train.job_secret_refs(),
                "AWS_ACCESS_KEY_ID": ("ganforge-s3", "access-key"),
                "AWS_SECRET_ACCESS_KEY": ("ganforge-s3", "secret-key"),
            },
        )
    )
    text = json.dumps(m)
    assert "forwarded-MLFLOW_TRACKING_URI" in text  # the environment did reach the manifest
    assert SECRET_VALUE not in text
    env = (
        m["spec"]["trainer"]["env"]
        if engine == "trainjob"
        else m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    )
    by_name = {e["name"]: e for e in env}
    assert by_name["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "ganforge-s3", "key": "secret-key"}},
    }
    assert "value" not in by_name["AWS_ACCESS_KEY_ID"]
    assert json.loads(by_name[CONFIG_ENV]["value"])["name"] == "dcgan"


def test_secret_like_plain_env_is_refused():
    with pytest.raises(ClusterSpecError, match="env_from_secrets"):
        _spec("trainjob", env={"AWS_SECRET_ACCESS_KEY": SECRET_VALUE})


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(engine="mpijob"), "engine="),
        (dict(name="Bad_Name"), "DNS-1035"),
        (dict(name="x" * 64), "DNS-1035"),
        (dict(memory="16 GB"), "quantity"),
        (dict(tolerations=[{"key": "a", "operator": "Maybe"}]), "operator"),
        (dict(env={"PET_NNODES": "2"}), "set by the training engine"),
        (dict(env_from_secrets={"TOKEN": ("Bad_Secret", "k")}), "secret name"),
        (dict(nnodes=3, gpus_per_node=5), "divisible"),
        (dict(out_uri="/local/out"), "pvc_mounts"),
    ],
)
def test_bad_settings_raise_clear_errors(bad, match):
    with pytest.raises(ClusterSpecError, match=match):
        _spec(**{"engine": "trainjob", **bad})


def test_generated_names_are_dns_labels():
    assert re.match(r"^wgan-gp-[0-9a-f]{6}$", job_name("wgan-gp"))
    long = job_name("a" * 80, "abc123")
    assert len(long) <= 63 and long.endswith("-abc123")
    assert job_name("3d_GAN", "abc123") == "gan-3d-gan-abc123"


def _apis(kube: KubeStandin):
    api_client = client.ApiClient(client.Configuration(host=kube.host))
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


class FakeClock:
    """Time that advances only when the watcher sleeps, so timeouts need no real waiting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.mark.parametrize("engine", ENGINES)
def test_launch_and_watch_success_deletes_the_job(engine):
    spec = _spec(engine, nnodes=2)
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Running", "Running", "Succeeded"])) as kube:
        api, core = _apis(kube)
        seen = []
        out = launch_and_watch(
            spec, api, poll_s=10, core_api=core, on_phase=seen.append, clock=clock, sleep=clock.sleep
        )
    assert out == {"name": spec.name, "engine": engine, "phase": "Succeeded", "seconds": 30.0}
    assert seen == ["Created", "Running", "Succeeded"]
    assert kube.recorded.created == [manifest(spec)]
    assert kube.recorded.deleted == [spec.name]
    assert kube.recorded.log_requests == []


@pytest.mark.parametrize("engine", ENGINES)
def test_keep_on_finish_leaves_the_job(engine):
    spec = _spec(engine, keep_on_finish=True)
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Succeeded"])) as kube:
        api, core = _apis(kube)
        assert launch_and_watch(spec, api, core_api=core, clock=clock, sleep=clock.sleep)["phase"] == "Succeeded"
    assert kube.recorded.deleted == [] and len(kube.objects) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_failure_raises_with_pod_log_tails(engine):
    spec = _spec(engine, nnodes=2)
    log = "\n".join(f"step {i} loss_d=0.5" for i in range(200)) + "\nRuntimeError: CUDA out of memory"
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Running", "Failed"], pod_log=log)) as kube:
        api, core = _apis(kube)
        with pytest.raises(ClusterTrainingError) as err:
            launch_and_watch(spec, api, core_api=core, log_tail_lines=20, clock=clock, sleep=clock.sleep)
    msg = str(err.value)
    assert "RuntimeError: CUDA out of memory" in msg and "BackoffLimitExceeded" in msg
    assert "step 199" in msg and "step 100 " not in msg  # only the tail
    assert len(kube.recorded.log_requests) == 2 and all(t == 20 for _, t in kube.recorded.log_requests)
    label = "jobset.sigs.k8s.io/jobset-name" if engine == "trainjob" else "training.kubeflow.org/job-name"
    assert kube.recorded.pod_selectors == [f"{label}={spec.name}"]
    assert kube.recorded.deleted == [spec.name]


def test_failure_with_keep_on_finish_keeps_the_job_for_inspection():
    spec = _spec("pytorchjob", keep_on_finish=True)
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Failed"], pod_log="boom")) as kube:
        api, core = _apis(kube)
        with pytest.raises(ClusterTrainingError, match="boom"):
            launch_and_watch(spec, api, core_api=core, clock=clock, sleep=clock.sleep)
    assert kube.recorded.deleted == []


@pytest.mark.parametrize("engine", ENGINES)
def test_timeout_deletes_and_raises(engine):
    spec = _spec(engine, timeout_s=60, keep_on_finish=True)
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Running"], pod_log="still training")) as kube:
        api, core = _apis(kube)
        with pytest.raises(ClusterTrainingError, match="timeout_s=60") as err:
            launch_and_watch(spec, api, poll_s=25, core_api=core, clock=clock, sleep=clock.sleep)
    assert "still training" in str(err.value)
    assert kube.recorded.deleted == [spec.name] and kube.objects == {}
    assert kube.recorded.gets == 4  # t = 0, 25, 50, 75 > 60


def test_name_clash_gives_a_clear_error():
    spec = _spec("trainjob")
    clock = FakeClock()
    with KubeStandin(Scenario(["Created", "Succeeded"])) as kube:
        api, core = _apis(kube)
        api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", manifest(spec))
        with pytest.raises(ClusterTrainingError, match="already exists; delete it or choose another name"):
            launch_and_watch(spec, api, core_api=core, clock=clock, sleep=clock.sleep)


def test_job_phase_reads_both_engines_conditions():
    def t(*c):
        return {"conditions": [{"type": x, "status": s} for x, s in c]}

    assert job_phase("pytorchjob", None) == "Pending"
    assert job_phase("pytorchjob", t(("Created", "False"), ("Running", "True"))) == "Running"
    assert job_phase("pytorchjob", t(("Running", "False"), ("Succeeded", "True"))) == "Succeeded"
    assert job_phase("trainjob", {"jobsStatus": [{"name": "node", "active": 2}]}) == "Running"
    assert job_phase("trainjob", t(("Complete", "True"))) == "Succeeded"
    assert job_phase("trainjob", t(("Failed", "True"))) == "Failed"
    assert job_phase("trainjob", t(("Complete", "False"))) == "Created"


def _run_pod_command(command: list[str], env: dict, tmp_path: Path) -> list[dict]:
    """Run a container command here with the env an engine would set; the probe module records each rank."""
    full_env = {
        **os.environ,
        **env,
        "PROBE_OUT": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted((json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")), key=lambda r: r["RANK"])


@pytest.mark.slow  # ~10 s: torchrun imports torch on a shared 2-core machine
@pytest.mark.parametrize("engine", ENGINES)
def test_container_command_runs_torchrun_with_the_engine_env(engine, tmp_path):
    """The real container command, run through torchrun with the variables the engine injects."""
    spec = _spec(engine, nnodes=1, gpus_per_node=2, module="kube_standin")
    m = manifest(spec)
    env_list = (
        m["spec"]["trainer"]["env"]
        if engine == "trainjob"
        else m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    )
    env = {e["name"]: e["value"] for e in env_list if "value" in e}
    port = str(29500 + os.getpid() % 1000)
    engine_env = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": m["spec"].get("nprocPerNode", "2"), "PET_NODE_RANK": "0"}
    if engine == "trainjob":
        engine_env.update(
            PET_NPROC_PER_NODE=str(m["spec"]["trainer"]["numProcPerNode"]),
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=port,
        )
    else:
        engine_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    command = (
        m["spec"]["trainer"]["command"]
        if engine == "trainjob"
        else m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    )
    ranks = _run_pod_command(command, {**env, **engine_env}, tmp_path)
    assert [(r["RANK"], r["WORLD_SIZE"], r["LOCAL_RANK"]) for r in ranks] == [("0", "2", "0"), ("1", "2", "1")]
    assert ranks[0]["argv"] == [
        "train",
        "--config-json",
        "/tmp/ganforge-config.json",
        "--data",
        "s3://ganforge/data/fmnist",
        "--out",
        "s3://ganforge/runs/x",
        "--resume",
    ]
    assert ranks[0]["config"]["name"] == "dcgan" and ranks[0]["MASTER_ADDR"] == "127.0.0.1"


@pytest.mark.slow
def test_local_torchrun_command_starts_the_ranks(tmp_path):
    cmd = torchrun_command(2, ["train", "--out", "a b"], module="kube_standin")
    assert cmd[1:3] == ["-m", "ganforge.launch"] and "--standalone" in cmd
    ranks = _run_pod_command(cmd, {}, tmp_path)
    assert [(r["RANK"], r["WORLD_SIZE"]) for r in ranks] == [("0", "2"), ("1", "2")]
    assert ranks[1]["argv"] == ["train", "--out", "a b"]


def test_train_command_quotes_arguments():
    cmd = train_command("trainjob", ["train", "--out", "s3://b/run; rm -rf /"])
    assert cmd[:2] == ["/bin/sh", "-c"] and "'s3://b/run; rm -rf /'" in cmd[2]
