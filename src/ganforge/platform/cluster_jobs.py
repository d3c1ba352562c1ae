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

The spec lives in ``cluster_spec`` and the manifests in ``cluster_manifests``; this module
creates, watches and deletes the job, and re-exports their public names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .cluster_manifests import manifest, pytorchjob_manifest, trainjob_manifest
from .cluster_spec import (
    CONFIG_ENV,
    CONFIG_PATH_IN_POD,
    CONTAINER_SECURITY_CONTEXT,
    ENGINES,
    PATCH_MANAGER,
    POD_LABEL,
    POD_SECURITY_CONTEXT,
    PYTORCHJOB_CONTAINER,
    PYTORCHJOB_PORT,
    RESOURCE,
    TRAINJOB_NODE,
    TRAINJOB_RUNTIME,
    WRITABLE_DIRS,
    ClusterSpecError,
    ClusterTrainingError,
    ClusterTrainSpec,
    job_name,
    spec_from_config,
    train_command,
)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_PATH_IN_POD",
    "CONTAINER_SECURITY_CONTEXT",
    "ENGINES",
    "PATCH_MANAGER",
    "POD_SECURITY_CONTEXT",
    "PYTORCHJOB_CONTAINER",
    "PYTORCHJOB_PORT",
    "TRAINJOB_NODE",
    "TRAINJOB_RUNTIME",
    "WRITABLE_DIRS",
    "ClusterSpecError",
    "ClusterTrainSpec",
    "ClusterTrainingError",
    "failure_message",
    "job_name",
    "job_phase",
    "kubernetes_apis",
    "launch_and_watch",
    "manifest",
    "pod_label_selector",
    "pod_log_tails",
    "pytorchjob_manifest",
    "spec_from_config",
    "train_command",
    "trainjob_manifest",
]


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
    return f"{POD_LABEL[spec.engine]}={spec.name}"


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

    group, version, plural, _ = RESOURCE[spec.engine]
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
    group, version, plural, kind = RESOURCE[spec.engine]
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
