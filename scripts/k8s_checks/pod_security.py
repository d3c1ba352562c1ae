"""Pod Security Standard "restricted" (v1.32) and no ServiceAccount token for every rendered and
training pod, and the compiled pipeline tasks' users."""

from __future__ import annotations

from .objects import containers_of, find_object, object_name, pod_spec
from .render import NAMESPACE
from .runtime import training_pod_specs

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(spec: dict, *, token_needed: bool = False) -> list[str]:
    """Rules of the "restricted" Pod Security Standard that a pod spec (or a pod patch) breaks."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is not allowed")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {', '.join(sorted(kinds))} is not allowed")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad = [
            c["name"]
            for c in containers_of(spec)
            if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
            not in ("RuntimeDefault", "Localhost")
        ]
        if bad:
            problems.append(f"seccompProfile RuntimeDefault/Localhost missing (pod and containers {bad})")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for c in containers_of(spec):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"container {name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"container {name}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"container {name}: capabilities.add {caps['add']} is not allowed")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"container {name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"container {name}: runAsUser 0")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"container {name}: hostPort is not allowed")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name}: readOnlyRootFilesystem must be true (emptyDir for /tmp)")
    if not token_needed and spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false (nothing here talks to the Kubernetes API)")
    return problems


def pod_security_problems(objects: list[dict], jobs: dict[str, dict]) -> list[str]:
    """Every pod of the render and of the training jobs meets "restricted"; the namespace enforces baseline."""
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            problems += [f"{object_name(obj)}: {p}" for p in restricted_problems(spec)]
    service_accounts = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ServiceAccount"}
    for engine, job in jobs.items():
        for spec in training_pod_specs(job):
            # TrainJob's runtime patch cannot carry automountServiceAccountToken: the SA decides.
            sa = service_accounts.get(spec.get("serviceAccountName", ""))
            if sa is None:
                problems.append(f"{engine} pods: ServiceAccount {spec.get('serviceAccountName')!r} is not in k8s/")
            elif job["kind"] == "TrainJob" and sa.get("automountServiceAccountToken") is not False:
                problems.append(f"{engine} pods: ServiceAccount {sa['metadata']['name']} mounts its token")
            problems += [
                f"{engine} pods: {p}" for p in restricted_problems(spec, token_needed=job["kind"] == "TrainJob")
            ]
    namespace = find_object(objects, "Namespace", NAMESPACE)
    labels = (namespace or {}).get("metadata", {}).get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") not in ("baseline", "restricted"):
        problems.append(f"Namespace {NAMESPACE}: pod-security.kubernetes.io/enforce must be baseline or restricted")
    if labels.get("pod-security.kubernetes.io/warn") != "restricted":
        problems.append(f"Namespace {NAMESPACE}: pod-security.kubernetes.io/warn must be restricted")
    return problems


def task_security_problems(executors: dict[str, dict]) -> list[str]:
    """Every compiled pipeline task runs as the non-root uid 1000 and carries the storage-client label."""
    problems = []
    for executor, settings in sorted(executors.items()):
        sc = settings.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") and str(sc.get("runAsUser")) == "1000"):
            problems.append(f"pipeline task {executor}: securityContext runAsNonRoot/runAsUser 1000 missing ({sc})")
        labels = (settings.get("podMetadata") or {}).get("labels") or {}
        if labels.get("ganforge.io/storage-client") != "true":
            problems.append(
                f"pipeline task {executor}: label ganforge.io/storage-client=true missing "
                "(NetworkPolicies admit it to MinIO and MLflow)"
            )
    return problems
