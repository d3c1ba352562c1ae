"""What a cluster training job is: the engines' constants, the validated ``ClusterTrainSpec`` and
the container command every node runs (see ``cluster_jobs`` for how the engines start it)."""

from __future__ import annotations

import re
import shlex
import uuid
from dataclasses import dataclass, field
from typing import Any

from ganforge.config import PipelineConfig
from ganforge.errors import GanforgeError

from .settings import WORKER_MODULE

ENGINES = ("trainjob", "pytorchjob")

# (group, version, plural, kind) of each engine's custom resource.
RESOURCE = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
}
# Labels the engines put on the pods they create: TrainJob → JobSet of the same name.
POD_LABEL = {
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
