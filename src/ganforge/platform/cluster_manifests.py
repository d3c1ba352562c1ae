"""The TrainJob and PyTorchJob manifests of a ``ClusterTrainSpec``.

Credentials appear only as ``secretKeyRef``; pods get the restricted security contexts and a
memory-backed /dev/shm and writable /tmp.
"""

from __future__ import annotations

from .cluster_spec import (
    CONTAINER_SECURITY_CONTEXT,
    PATCH_MANAGER,
    POD_SECURITY_CONTEXT,
    PYTORCHJOB_CONTAINER,
    PYTORCHJOB_PORT,
    RESOURCE,
    TRAINJOB_NODE,
    TRAINJOB_RUNTIME,
    ClusterTrainSpec,
)


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
    group, version, _, kind = RESOURCE["pytorchjob"]
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
    group, version, _, kind = RESOURCE["trainjob"]
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
