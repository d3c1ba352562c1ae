"""What ganforge itself creates at run time (not in the render): the training job manifests of
ganforge.platform.cluster_jobs and the Kubernetes settings of the pipeline tasks (pipelines/kube.py),
and the Secrets those reference."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .objects import object_keys, referenced_keys
from .render import NAMESPACE


def training_job_manifests() -> dict[str, dict]:
    """The TrainJob and PyTorchJob the train step would create (2 nodes, GPUs, as cluster_train sets them)."""
    from ganforge.config import build_config
    from ganforge.platform.cluster_jobs import manifest, spec_from_config
    from ganforge.platform.cluster_train import (
        MLFLOW_SECRET,
        MLFLOW_SECRET_KEYS,
        S3_SECRET,
        S3_SECRET_KEYS,
        TRAINING_SERVICE_ACCOUNT,
    )
    from ganforge.platform.gpu_nodes import GPU_TOLERATION

    cfg = build_config("dcgan", "tiny", {})
    secrets = {**{k: (S3_SECRET, k) for k in S3_SECRET_KEYS}, **{k: (MLFLOW_SECRET, k) for k in MLFLOW_SECRET_KEYS}}
    out = {}
    for engine in ("trainjob", "pytorchjob"):
        spec = spec_from_config(
            cfg,
            image="registry.example.com/ganforge-gpu:0.1.0",
            namespace=NAMESPACE,
            data_uri="s3://ganforge-artifacts/d",
            out_uri="s3://ganforge-artifacts/o",
            engine=engine,
            gpus_per_node=2,
            nnodes=2,
            name="dcgan-abc123",
            env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
            env_from_secrets=secrets,
            tolerations=[GPU_TOLERATION],
            service_account=TRAINING_SERVICE_ACCOUNT,
        )
        out[engine] = manifest(spec)
    return out


def training_pod_specs(job: dict) -> list[dict]:
    """Pod specs of a training job; for a TrainJob the patched pod with the trainer's env merged in."""
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    specs = []
    for patch in job["spec"].get("runtimePatches") or []:
        for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            spec = json.loads(json.dumps(rj["template"]["spec"]["template"]["spec"]))
            for c in spec.get("containers") or []:
                c.setdefault("env", []).extend(job["spec"]["trainer"].get("env") or [])
            specs.append(spec)
    return specs


def compiled_task_settings() -> dict[str, dict]:
    """executor name -> kubernetes platform settings of the compiled dcgan pipeline (KFP IR)."""
    from kfp import compiler

    from pipelines.factory import build_pipeline

    with tempfile.TemporaryDirectory(prefix="k8s-check-kfp-") as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(build_pipeline("dcgan", "full"), str(path))
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    platform = next(d for d in docs if "platforms" in d)
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def runtime_secret_problems(objects: list[dict], jobs: dict[str, dict], executors: dict[str, dict]) -> list[str]:
    """Every Secret/key the pipeline tasks and the training pods reference must be in the render."""
    secrets = {o["metadata"]["name"]: object_keys(o) for o in objects if o.get("kind") == "Secret"}
    problems = []
    for executor, settings in sorted(executors.items()):
        for ref in settings.get("secretAsEnv") or []:
            name = ref.get("secretName") or (ref.get("secretNameParameter") or {}).get("runtimeValue", {}).get(
                "constant"
            )
            for pair in ref.get("keyToEnv") or []:
                if name not in secrets:
                    problems.append(f"pipeline task {executor}: reads Secret {name}, which k8s/ does not define")
                elif pair["secretKey"] not in secrets[name]:
                    problems.append(
                        f"pipeline task {executor}: reads key {pair['secretKey']} of Secret {name}, "
                        "which has no such key"
                    )
                if ref.get("optional"):
                    problems.append(f"pipeline task {executor}: Secret {name} is optional; MLflow's auth needs it")
    for engine, job in jobs.items():
        for spec in training_pod_specs(job):
            for kind, name, key in referenced_keys(spec):
                if kind == "Secret" and name not in secrets:
                    problems.append(f"{engine} pods: read Secret {name}, which k8s/ does not define")
                elif kind == "Secret" and key is not None and key not in secrets[name]:
                    problems.append(f"{engine} pods: read key {key} of Secret {name}, which has no such key")
    return problems


@dataclass(frozen=True)
class Runtime:
    """What ganforge creates at run time, for the checks that compare it with the render."""

    jobs: dict
    executors: dict

    @staticmethod
    def build() -> Runtime:
        return Runtime(training_job_manifests(), compiled_task_settings())
