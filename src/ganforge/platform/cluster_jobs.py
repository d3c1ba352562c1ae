"""Launch training on a cluster (Kubeflow Trainer ``TrainJob`` or Training Operator ``PyTorchJob``).

Both engines start the same image with ``python -m ganforge.launch -m ganforge.platform.worker train ...``
(torchrun) on every node:

* TrainJob (trainer.kubeflow.org/v1alpha1, runtime ``torch-distributed``): the Trainer's torch
  plugin sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
  ``PET_MASTER_PORT`` on the ``node`` container; torchrun reads ``PET_*`` as the defaults of its
  flags, so the command carries no rendezvous flags.
* PyTorchJob (kubeflow.org/v1, Training Operator ≥ 1.7): the operator sets ``PET_NNODES``,
  ``PET_NPROC_PER_NODE`` (from ``spec.nprocPerNode``), ``PET_NODE_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT``; the master address is not a ``PET_`` variable there, so it is passed explicitly.

The run's config travels as plain JSON in ``GANFORGE_CONFIG_JSON`` (it holds no secrets) and is
written to a file in the pod before torchrun starts. Credentials come only from Kubernetes
Secrets through ``secretKeyRef``: a manifest never holds a secret value.

"""

from __future__ import annotations

import os
import re
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ganforge.config import PipelineConfig
from ganforge.errors import GanforgeError

from .settings import WORKER_MODULE

ENGINES = ("trainjob", "pytorchjob")

# (group, version, plural, kind) of each engine's custom resource.
_RESOURCE = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
}
# Labels the engines put on the pods they create: TrainJob → JobSet of the same name.
_POD_LABEL = {
    "trainjob": "jobset.sigs.k8s.io/jobset-name",
    "pytorchjob": "training.kubeflow.org/job-name",
}
TRAINJOB_RUNTIME = "torch-distributed"
TRAINJOB_NODE = "node"  # replicated job and container name in the torch-distributed runtime
PYTORCHJOB_CONTAINER = "pytorch"  # the operator only wires env/ports into this container name
PYTORCHJOB_PORT = 23456
PATCH_MANAGER = "ganforge"
CONFIG_ENV = "GANFORGE_CONFIG_JSON"
CONFIG_PATH_IN_POD = "/tmp/ganforge-config.json"
# Pods run as the images' non-root user with a read-only root filesystem; /tmp is a writable
# emptyDir (config file, staging of data and checkpoints: GANFORGE_CACHE, HOME). These settings
# pass the Pod Security Standard "restricted", and k8s/base/admission-policy.yaml rejects
# TrainJob/PyTorchJob objects without them in the ganforge namespace.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# The container command points HOME (when the image's is read-only) and GANFORGE_CACHE (unless
# set) at /tmp, so staging and caches land on the emptyDir.
WRITABLE_DIRS = '[ -w "$HOME" ] || export HOME=/tmp; export GANFORGE_CACHE="${GANFORGE_CACHE:-/tmp/ganforge-cache}"; '

# Set by the engines; a user value would fight them (Trainer rejects PET_* in trainer.env).
_RESERVED_ENV = re.compile(r"^(PET_.*|MASTER_ADDR|MASTER_PORT|WORLD_SIZE|RANK|LOCAL_RANK|" + CONFIG_ENV + ")$")
# Plain env vars whose names look like credentials must come from a Secret instead.
_SECRET_LIKE_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY)", re.I)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class ClusterSpecError(GanforgeError, ValueError):
    """A cluster launch setting is invalid; the message names the field and the fix."""


class ClusterTrainingError(GanforgeError, RuntimeError):
    """The cluster training job failed or timed out; the message carries the pods' last log lines."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ClusterSpecError(msg)


@dataclass
class ClusterTrainSpec:
    """Everything needed to run one training job on the cluster."""

    engine: str
    """``trainjob`` (Kubeflow Trainer v2) or ``pytorchjob`` (Training Operator v1)."""
    namespace: str
    name: str
    """RFC 1035 label, ≤ 63 chars (TrainJob's CRD demands it; PyTorchJob names its Services after it)."""
    image: str
    command: list[str]
    """Container command, the same on every node (see ``spec_from_config``)."""
    nnodes: int = 1
    gpus_per_node: int = 1
    """``nvidia.com/gpu`` limit per node and torchrun processes per node; 0 runs one CPU process per node."""
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    env_from_secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Env var → (Secret name, key): rendered as ``valueFrom.secretKeyRef``, never as a value."""
    env: dict[str, str] = field(default_factory=dict)
    shm_size: str = "2Gi"
    """Size of the memory-backed emptyDir at /dev/shm (DataLoader workers and NCCL need more than 64Mi)."""
    timeout_s: int = 24 * 3600
    keep_on_finish: bool = False
    """Keep the job (and its pods, for logs) after it finishes; otherwise it is deleted."""
    service_account: str = ""
    pvc_mounts: dict[str, str] = field(default_factory=dict)
    """PersistentVolumeClaim name → mount path, for data and checkpoints on a shared volume."""

    def __post_init__(self) -> None:
        _require(self.engine in ENGINES, f"engine={self.engine!r} is not valid; choose one of {ENGINES}")
        _require(
            bool(_DNS1123_SUBDOMAIN.match(self.namespace)) and len(self.namespace) <= 63,
            f"namespace={self.namespace!r} is not a valid Kubernetes namespace (lower-case DNS label)",
        )
        _require(
            bool(_DNS1035_LABEL.match(self.name)) and len(self.name) <= 63,
            f"name={self.name!r} must be a DNS-1035 label: ≤ 63 chars of a-z, 0-9 and '-', starting "
            "with a letter and ending alphanumeric (e.g. 'dcgan-3f9a1c')",
        )
        _require(
            bool(self.image) and not any(c.isspace() for c in self.image),
            f"image={self.image!r} must be a container image reference such as 'registry/ganforge:0.1.0'",
        )
        _require(bool(self.command), "command must not be empty; build the spec with spec_from_config()")
        _require(self.nnodes >= 1, f"nnodes={self.nnodes} must be >= 1")
        _require(self.gpus_per_node >= 0, f"gpus_per_node={self.gpus_per_node} must be >= 0")
        for label, q in (("cpu", self.cpu), ("memory", self.memory), ("shm_size", self.shm_size)):
            _require(
                bool(_QUANTITY.match(str(q))), f"{label}={q!r} is not a Kubernetes quantity (e.g. '4', '500m', '16Gi')"
            )
        _require(self.timeout_s > 0, f"timeout_s={self.timeout_s} must be positive")
        for i, t in enumerate(self.tolerations):
            _check_toleration(i, t)
        for k, v in self.node_selector.items():
            _require(
                isinstance(k, str) and isinstance(v, str) and bool(k),
                f"node_selector entry {k!r}: {v!r} must map a label key to a string value",
            )
        for name, value in self.env.items():
            _check_env_name(name)
            _require(isinstance(value, str), f"env[{name!r}] must be a string, got {type(value).__name__}")
            _require(
                not _SECRET_LIKE_ENV.search(name),
                f"env[{name!r}] looks like a credential; put it in a Secret and pass "
                f"env_from_secrets={{{name!r}: (SECRET_NAME, KEY)}} instead",
            )
        for name, ref in self.env_from_secrets.items():
            _check_env_name(name)
            _require(
                isinstance(ref, (tuple, list)) and len(ref) == 2,
                f"env_from_secrets[{name!r}] must be a (secret_name, key) pair, got {ref!r}",
            )
            secret, key = ref
            _require(
                bool(_DNS1123_SUBDOMAIN.match(str(secret))),
                f"env_from_secrets[{name!r}]: secret name {secret!r} is not a valid Secret name",
            )
            _require(
                bool(_SECRET_KEY.match(str(key))),
                f"env_from_secrets[{name!r}]: key {key!r} is not a valid Secret key ([-._a-zA-Z0-9]+)",
            )
        both = sorted(set(self.env) & set(self.env_from_secrets))
        _require(not both, f"env vars {both} are set both in env and env_from_secrets; keep one")
        if self.service_account:
            _require(
                bool(_DNS1123_SUBDOMAIN.match(self.service_account)),
                f"service_account={self.service_account!r} is not a valid ServiceAccount name",
            )
        for claim, path in self.pvc_mounts.items():
            _require(bool(_DNS1123_SUBDOMAIN.match(claim)), f"pvc_mounts: claim name {claim!r} is not valid")
            _require(
                path.startswith("/") and path not in ("/", "/dev/shm"),
                f"pvc_mounts[{claim!r}]={path!r} must be an absolute path other than / and /dev/shm",
            )

    @property
    def nproc_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


def _check_env_name(name: str) -> None:
    _require(bool(_ENV_NAME.match(name)), f"env var name {name!r} is not valid ([-._a-zA-Z][-._a-zA-Z0-9]*)")
    _require(not _RESERVED_ENV.match(name), f"env var {name!r} is set by the training engine or by ganforge; remove it")


def _check_toleration(i: int, t: dict) -> None:
    _require(
        isinstance(t, dict),
        f"tolerations[{i}] must be a dict like {{'key': 'nvidia.com/gpu', "
        "'operator': 'Exists', 'effect': 'NoSchedule'}}",
    )
    unknown = sorted(set(t) - _TOLERATION_KEYS)
    _require(not unknown, f"tolerations[{i}] has unknown keys {unknown}; allowed: {sorted(_TOLERATION_KEYS)}")
    _require(
        t.get("operator", "Equal") in ("Equal", "Exists"),
        f"tolerations[{i}].operator={t.get('operator')!r} must be 'Equal' or 'Exists'",
    )
    _require(
        t.get("effect", "") in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"),
        f"tolerations[{i}].effect={t.get('effect')!r} must be NoSchedule, PreferNoSchedule or NoExecute",
    )
    _require(
        not (t.get("operator") == "Exists" and t.get("value")), f"tolerations[{i}]: operator 'Exists' takes no value"
    )


def job_name(pipeline_name: str, short_id: str | None = None) -> str:
    """``dcgan`` → ``dcgan-3f9a1c``: a DNS-1035 label, unique per launch, ≤ 63 chars."""
    base = re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-") or "ganforge"
    if not base[0].isalpha():
        base = f"gan-{base}"
    suffix = short_id or uuid.uuid4().hex[:6]
    return f"{base[: 62 - len(suffix)].rstrip('-')}-{suffix}"


def train_command(engine: str, cli_args: list[str], module: str = WORKER_MODULE) -> list[str]:
    """The container command: write the config from ``GANFORGE_CONFIG_JSON``, then exec torchrun
    through ``ganforge.launch`` (torchrun's own parser, so the pod exits 143 when SIGTERM stops it).

    torchrun takes nnodes / nproc-per-node / node-rank from the engine's ``PET_*`` variables; on
    a PyTorchJob the master address comes from ``MASTER_ADDR``/``MASTER_PORT``.
    """
    _require(engine in ENGINES, f"engine={engine!r} is not valid; choose one of {ENGINES}")
    rendezvous = '--master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" ' if engine == "pytorchjob" else ""
    script = (
        f'{WRITABLE_DIRS}printf %s "${CONFIG_ENV}" > {CONFIG_PATH_IN_POD} && '
        f"exec python -m ganforge.launch {rendezvous}-m {shlex.quote(module)} {shlex.join(cli_args)}"
    )
    return ["/bin/sh", "-c", script]


def spec_from_config(
    cfg: PipelineConfig,
    *,
    image: str,
    namespace: str,
    data_uri: str,
    out_uri: str,
    engine: str = "trainjob",
    gpus_per_node: int = 1,
    nnodes: int = 1,
    name: str | None = None,
    module: str = WORKER_MODULE,
    **overrides: Any,
) -> ClusterTrainSpec:
    """Build the launch spec for ``cfg``: ``torchrun -m ganforge.platform.worker train`` on ``nnodes`` ×
    ``gpus_per_node``.

    ``data_uri``/``out_uri`` are ``s3://`` URIs or paths under a ``pvc_mounts`` mount. The run
    always passes ``--resume`` so a pod restarted by the engine continues from its last checkpoint.
    ``overrides`` are further ClusterTrainSpec fields (cpu, memory, tolerations, env_from_secrets, ...).
    """
    pvc_mounts = overrides.get("pvc_mounts", {})
    for label, uri in (("data_uri", data_uri), ("out_uri", out_uri)):
        if not uri.startswith("s3://"):
            _require(
                uri.startswith("/")
                and any(uri == m or uri.startswith(m.rstrip("/") + "/") for m in pvc_mounts.values()),
                f"{label}={uri!r} must be an s3:// URI or a path under one of pvc_mounts "
                f"{sorted(pvc_mounts.values())} (pods see only shared storage)",
            )
    world = nnodes * max(gpus_per_node, 1)
    _require(
        cfg.train.batch_size % world == 0,
        f"train.batch_size={cfg.train.batch_size} must be divisible by nnodes*gpus_per_node={world}; "
        "change the batch size or the node/GPU count",
    )
    cli_args = ["train", "--config-json", CONFIG_PATH_IN_POD, "--data", data_uri, "--out", out_uri, "--resume"]
    spec = ClusterTrainSpec(
        engine=engine,
        namespace=namespace,
        name=name or job_name(cfg.name),
        image=image,
        command=train_command(engine, cli_args, module),
        nnodes=nnodes,
        gpus_per_node=gpus_per_node,
        **overrides,
    )
    # CONFIG_ENV is reserved for users, so it is added after validation.
    spec.env = {**spec.env, CONFIG_ENV: cfg.to_json()}
    return spec


def _resources(spec: ClusterTrainSpec) -> dict:
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits}


def _env_list(spec: ClusterTrainSpec) -> list[dict]:
    plain = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    secret = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": s, "key": key}}}
        for k, (s, key) in sorted(spec.env_from_secrets.items())
    ]
    return plain + secret


def _volumes(spec: ClusterTrainSpec) -> list[dict]:
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}
    tmp = {"name": "tmp", "emptyDir": {}}
    pvcs = [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(sorted(spec.pvc_mounts))
    ]
    return [shm, tmp, *pvcs]


def _volume_mounts(spec: ClusterTrainSpec) -> list[dict]:
    pvcs = [
        {"name": f"pvc-{i}", "mountPath": spec.pvc_mounts[claim]} for i, claim in enumerate(sorted(spec.pvc_mounts))
    ]
    return [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}, *pvcs]


def _labels(spec: ClusterTrainSpec) -> dict:
    return {
        "app.kubernetes.io/name": "ganforge",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/instance": spec.name,
    }


def _pod_scheduling(spec: ClusterTrainSpec) -> dict:
    out: dict = {"securityContext": dict(POD_SECURITY_CONTEXT)}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        out["serviceAccountName"] = spec.service_account
    return out


def _pytorchjob_replica(spec: ClusterTrainSpec, replicas: int) -> dict:
    container = {
        "name": PYTORCHJOB_CONTAINER,
        "image": spec.image,
        "command": list(spec.command),
        "env": _env_list(spec),
        "resources": _resources(spec),
        "volumeMounts": _volume_mounts(spec),
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT, "protocol": "TCP"}],
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
    }
    # Training talks to S3 and MLflow, never to the Kubernetes API: no token in the pod.
    pod_spec = {
        "containers": [container],
        "volumes": _volumes(spec),
        "automountServiceAccountToken": False,
        **_pod_scheduling(spec),
    }
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {"metadata": {"labels": _labels(spec)}, "spec": pod_spec},
    }


def pytorchjob_manifest(spec: ClusterTrainSpec) -> dict:
    """PyTorchJob (kubeflow.org/v1): one Master plus ``nnodes - 1`` Workers, ``nprocPerNode`` ranks each."""
    group, version, _, kind = _RESOURCE["pytorchjob"]
    replica_specs = {"Master": _pytorchjob_replica(spec, 1)}
    if spec.nnodes > 1:
        replica_specs["Worker"] = _pytorchjob_replica(spec, spec.nnodes - 1)
    run_policy: dict = {
        # Pods stay until the job is deleted, so a failure's logs can still be read.
        "cleanPodPolicy": "None",
        "activeDeadlineSeconds": int(spec.timeout_s),
        "backoffLimit": 3,
    }
    if not spec.keep_on_finish:
        # Backstop if the watcher dies: the operator removes the finished job after an hour.
        run_policy["ttlSecondsAfterFinished"] = 3600
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "nprocPerNode": str(spec.nproc_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def trainjob_manifest(spec: ClusterTrainSpec) -> dict:
    """TrainJob (trainer.kubeflow.org/v1alpha1) on the ``torch-distributed`` ClusterTrainingRuntime.

    Image, command, env and resources go in ``spec.trainer``; pod-level settings (node selector,
    tolerations, service account, /dev/shm and PVC volumes) in a ``runtimePatches`` entry for the
    runtime's ``node`` replicated job. The runtime patch has no ``automountServiceAccountToken``
    field: the token stays out of the pods through the ServiceAccount (``ganforge-training`` in
    k8s/base sets it to false).
    """
    group, version, _, kind = _RESOURCE["trainjob"]
    pod_patch = {
        **_pod_scheduling(spec),
        "volumes": _volumes(spec),
        "containers": [
            {
                "name": TRAINJOB_NODE,
                "volumeMounts": _volume_mounts(spec),
                "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
            }
        ],
    }
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": TRAINJOB_NODE,
                            "template": {
                                "spec": {"template": {"metadata": {"labels": _labels(spec)}, "spec": pod_patch}}
                            },
                        }
                    ]
                }
            }
        },
    }
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "runtimeRef": {"apiGroup": group, "kind": "ClusterTrainingRuntime", "name": TRAINJOB_RUNTIME},
            "activeDeadlineSeconds": int(spec.timeout_s),
            "trainer": {
                "image": spec.image,
                "command": list(spec.command),
                "env": _env_list(spec),
                "numNodes": spec.nnodes,
                "numProcPerNode": spec.nproc_per_node,
                "resourcesPerNode": _resources(spec),
            },
            "runtimePatches": [patch],
        },
    }


def manifest(spec: ClusterTrainSpec) -> dict:
    """The engine's manifest for ``spec``."""
    return trainjob_manifest(spec) if spec.engine == "trainjob" else pytorchjob_manifest(spec)


def job_phase(engine: str, status: dict | None) -> str:
    """``Pending`` / ``Created`` / ``Running`` / ``Restarting`` / ``Suspended`` / ``Succeeded`` / ``Failed``.

    PyTorchJob reports Created → Running → Succeeded|Failed conditions; TrainJob reports only
    Complete / Failed / Suspended conditions, and its child Jobs in ``jobsStatus``.
    """
    conditions = [c for c in (status or {}).get("conditions") or [] if c.get("status") == "True"]
    types = {c.get("type") for c in conditions}
    if engine == "trainjob":
        if "Failed" in types:
            return "Failed"
        if "Complete" in types:
            return "Succeeded"
        if "Suspended" in types:
            return "Suspended"
        jobs = (status or {}).get("jobsStatus") or []
        return "Running" if any(j.get("active") or j.get("ready") for j in jobs) else "Created"
    for terminal in ("Failed", "Succeeded"):
        if terminal in types:
            return terminal
    return conditions[-1]["type"] if conditions else "Pending"


def failure_message(status: dict | None) -> str:
    """``reason: message`` of the Failed condition, if any."""
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return ""


def pod_label_selector(spec: ClusterTrainSpec) -> str:
    return f"{_POD_LABEL[spec.engine]}={spec.name}"


def pod_log_tails(core_api: Any, spec: ClusterTrainSpec, tail_lines: int = 50) -> str:
    """The last ``tail_lines`` log lines of every pod of the job, each block headed by the pod name."""
    pods = core_api.list_namespaced_pod(spec.namespace, label_selector=pod_label_selector(spec)).items
    blocks = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        try:
            text = core_api.read_namespaced_pod_log(pod.metadata.name, spec.namespace, tail_lines=tail_lines)
        except Exception as e:  # a pod that never started has no log; say so instead of failing
            text = f"(no log: {getattr(e, 'reason', None) or e})"
        blocks.append(f"--- pod {pod.metadata.name} (last {tail_lines} lines) ---\n{text.rstrip()}")
    return "\n".join(blocks) if blocks else f"(no pods matched {pod_label_selector(spec)!r})"


def kubernetes_apis() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api): in a pod its ServiceAccount, else the kubeconfig KUBECONFIG names now
    (default ``~/.kube/config``) — the one Kubernetes client factory.

    Outside a pod the client gets a configuration of its own: the kubernetes package reads KUBECONFIG
    only once, when it is first imported, and its global configuration would ignore a later value.
    """
    from kubernetes import client, config  # the client library is large; only launching a job needs it

    try:
        config.load_incluster_config()
        return client.CustomObjectsApi(), client.CoreV1Api()
    except config.ConfigException:
        pass
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    except (config.ConfigException, FileNotFoundError, TypeError) as e:
        raise ClusterTrainingError(
            f"no Kubernetes credentials ({kubeconfig}: {e}): run inside a pod with a ServiceAccount allowed to "
            "create trainjobs/pytorchjobs, or point KUBECONFIG at a cluster"
        ) from e
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def _delete(api: Any, spec: ClusterTrainSpec) -> None:
    from kubernetes.client import V1DeleteOptions
    from kubernetes.client.rest import ApiException

    group, version, plural, _ = _RESOURCE[spec.engine]
    try:
        # Background propagation: the engine's pods and services go with the job.
        api.delete_namespaced_custom_object(
            group, version, spec.namespace, plural, spec.name, body=V1DeleteOptions(propagation_policy="Background")
        )
    except ApiException as e:
        if e.status != 404:
            raise


def launch_and_watch(
    spec: ClusterTrainSpec,
    api: Any = None,
    poll_s: float = 5,
    *,
    core_api: Any = None,
    log_tail_lines: int = 50,
    on_phase: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Create the job, poll its status until it finishes, clean up; return name, engine, phase, seconds.

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (default: in-cluster config, else
    kubeconfig); ``core_api`` a ``CoreV1Api`` for pod logs (default: on the same ApiClient).
    Raises ClusterTrainingError with the pods' last log lines when the job fails, and when it
    runs past ``spec.timeout_s`` (the job is then deleted whatever ``keep_on_finish`` says).
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    if api is None:
        api, default_core = kubernetes_apis()
        core_api = core_api or default_core
    core_api = core_api or client.CoreV1Api(api.api_client)
    group, version, plural, kind = _RESOURCE[spec.engine]
    try:
        api.create_namespaced_custom_object(group, version, spec.namespace, plural, manifest(spec))
    except ApiException as e:
        hint = {
            409: f"a {kind} named {spec.name!r} already exists; delete it or choose another name",
            404: f"the {kind} CRD ({plural}.{group}) is not installed in this cluster; install "
            f"{'Kubeflow Trainer' if spec.engine == 'trainjob' else 'the Training Operator'} or pick the other engine",
            403: f"the ServiceAccount may not create {plural}.{group} in namespace {spec.namespace!r}; grant it RBAC",
        }
        raise ClusterTrainingError(
            f"creating {kind} {spec.namespace}/{spec.name} failed ({e.status} {e.reason}): {hint.get(e.status, e.body)}"
        ) from e
    start = clock()
    phase = last_phase = ""
    while True:
        obj = api.get_namespaced_custom_object(group, version, spec.namespace, plural, spec.name)
        status = obj.get("status")
        phase = job_phase(spec.engine, status)
        if phase != last_phase and on_phase:
            on_phase(phase)
        last_phase = phase
        elapsed = clock() - start
        if phase in ("Succeeded", "Failed"):
            break
        if elapsed > spec.timeout_s:
            logs = pod_log_tails(core_api, spec, log_tail_lines)
            _delete(api, spec)
            raise ClusterTrainingError(
                f"{kind} {spec.namespace}/{spec.name} still {phase} after "
                f"{elapsed:.0f}s > timeout_s={spec.timeout_s}; deleted it.\n{logs}"
            )
        sleep(poll_s)
    seconds = round(clock() - start, 3)
    if phase == "Failed":
        logs = pod_log_tails(core_api, spec, log_tail_lines)
        if not spec.keep_on_finish:
            _delete(api, spec)
        raise ClusterTrainingError(
            f"{kind} {spec.namespace}/{spec.name} failed after {seconds:.0f}s: "
            f"{failure_message(status) or 'no reason given'}\n{logs}"
        )
    if not spec.keep_on_finish:
        _delete(api, spec)
    return {"name": spec.name, "engine": spec.engine, "phase": phase, "seconds": seconds}
