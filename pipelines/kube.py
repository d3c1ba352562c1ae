"""Kubernetes settings of the DAG's tasks (kfp-kubernetes), in one place.

They take effect on a cluster only; kfp.local warns that they "have no effect in the current
local runner" and runs the same DAG. Credentials enter as environment variables from
Kubernetes Secrets by name and key, so no credential value is ever in the compiled YAML.
The names match k8s/base (Secret ``ganforge-s3``, ConfigMap ``ganforge-env``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kfp import kubernetes

from components.image import IMAGE
from ganforge.config import PipelineConfig
from ganforge.platform import gpu_nodes


@dataclass(frozen=True)
class ClusterSettings:
    gpus_per_node: int = 0
    """GPUs of the training (and evaluation) pod; 0 runs on CPU nodes."""
    accelerator_type: str = "nvidia.com/gpu"
    node_selector: dict = field(default_factory=dict)
    """Extra nodeSelector of GPU pods, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}."""
    tolerations: tuple = (gpu_nodes.GPU_TOLERATION,)
    train_cpu: str = "4"
    train_memory: str = "16Gi"
    step_cpu: str = "1"
    step_memory: str = "4Gi"
    eval_memory: str = "8Gi"
    shm_size: str = "8Gi"
    """/dev/shm for DDP/NCCL and data workers (the container default is 64 MiB)."""
    s3_secret: str = "ganforge-s3"
    env_config_map: str = "ganforge-env"
    mlflow_secret: str = "ganforge-mlflow"
    image_pull_secrets: tuple = ()
    train_timeout_s: int = 48 * 3600
    step_timeout_s: int = 4 * 3600
    train_retries: int = 2
    """Retries of the training task; each resumes from the last checkpoint in its model artifact."""
    step_retries: int = 2
    """Retries of the prep and register tasks (S3 or MLflow server hiccups on a cluster)."""

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> ClusterSettings:
        """GPU node selector and tolerations from GANFORGE_GPU_NODE_SELECTOR / GANFORGE_GPU_TOLERATIONS
        (``ganforge.platform.gpu_nodes``), read once here."""
        return cls(
            gpus_per_node=gpu_nodes.gpus_per_node(cfg),
            node_selector=gpu_nodes.gpu_node_selector(),
            tolerations=tuple(gpu_nodes.gpu_tolerations()),
        )

    @classmethod
    def for_local(cls, cfg: PipelineConfig) -> ClusterSettings:
        """A run on this machine (kfp.local): no retries. kfp.local honours them, backoff included, but here
        nothing is preempted, so a failure repeats on the next attempt and retrying only delays the error."""
        return replace(cls.from_config(cfg), train_retries=0, step_retries=0)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
ENV_KEYS = {
    k: k
    for k in (
        "MLFLOW_TRACKING_URI",
        "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL",
        "GANFORGE_ARTIFACT_ROOT",
        "GANFORGE_S3_ATTEMPTS",
        "GANFORGE_S3_BACKOFF_S",
    )
}
STORAGE_CLIENT_LABEL = ("ganforge.io/storage-client", "true")  # admitted by k8s/base NetworkPolicies
MLFLOW_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
# The images' non-root user. KFP's backend adds allowPrivilegeEscalation=false, drop ALL and
# seccomp RuntimeDefault itself (kfp-kubernetes 2.17.0 set_security_context docstring); it offers no
# readOnlyRootFilesystem and no automountServiceAccountToken (KFP's launcher and Argo's executor
# use the token), so those two stay as KFP sets them (see k8s/README.md).
TASK_UID = 1000


def use_credentials(task, s: ClusterSettings) -> None:
    """S3 keys and MLflow settings as env vars, by reference to a Secret/ConfigMap."""
    kubernetes.use_secret_as_env(task, s.s3_secret, S3_KEYS)
    kubernetes.use_config_map_as_env(task, s.env_config_map, ENV_KEYS)
    # Required: the MLflow server in k8s/base runs with basic-auth and refuses anonymous requests.
    kubernetes.use_secret_as_env(task, s.mlflow_secret, MLFLOW_KEYS)
    kubernetes.add_pod_label(task, *STORAGE_CLIENT_LABEL)
    kubernetes.set_security_context(task, run_as_user=TASK_UID, run_as_group=TASK_UID, run_as_non_root=True)
    if s.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(s.image_pull_secrets))


def use_gpus(task, s: ClusterSettings, gpus: int) -> None:
    task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(gpus)
    for key, value in s.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for t in s.tolerations:
        kubernetes.add_toleration(
            task, key=t.get("key"), operator=t.get("operator"), value=t.get("value"), effect=t.get("effect")
        )


def apply_cluster_settings(tasks: dict, s: ClusterSettings) -> None:
    """Resources, GPUs, credentials, /dev/shm, timeouts and retries for the DAG's tasks.

    ``tasks`` maps start_run, the prep tasks (names starting ``prep_``: prep_train and prep_reference, which
    may be one task), train, evaluate, register and end_run to tasks.
    """
    for name, task in {id(t): (n, t) for n, t in tasks.items()}.values():
        # Each run must open its own MLflow run and retrain: caching would replay a stale run id.
        task.set_caching_options(False)
        use_credentials(task, s)
        if name == "train":
            # The image a TrainJob/PyTorchJob launched by this step runs: the pipeline's own.
            task.set_env_variable("GANFORGE_IMAGE", IMAGE)
            # ... and the GPU placement of its pods: the same as this task's.
            task.set_env_variable(gpu_nodes.NODE_SELECTOR_ENV, gpu_nodes.format_node_selector(s.node_selector))
            task.set_env_variable(gpu_nodes.TOLERATIONS_ENV, gpu_nodes.format_tolerations(s.tolerations))
            task.set_cpu_request(s.train_cpu).set_memory_request(s.train_memory).set_memory_limit(s.train_memory)
            kubernetes.empty_dir_mount(
                task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=s.shm_size
            )
            kubernetes.set_timeout(task, s.train_timeout_s)
            if s.train_retries:
                task.set_retry(
                    num_retries=s.train_retries,
                    backoff_duration="60s",
                    backoff_factor=2.0,
                    backoff_max_duration="3600s",
                )
            if s.gpus_per_node:
                use_gpus(task, s, s.gpus_per_node)
        else:
            memory = s.eval_memory if name == "evaluate" else s.step_memory
            task.set_cpu_request(s.step_cpu).set_memory_request(memory).set_memory_limit(memory)
            kubernetes.set_timeout(task, s.step_timeout_s)
            if name == "evaluate" and s.gpus_per_node:
                use_gpus(task, s, 1)
            if (name.startswith("prep_") or name == "register") and s.step_retries:
                task.set_retry(num_retries=s.step_retries, backoff_duration="30s", backoff_factor=2.0)
