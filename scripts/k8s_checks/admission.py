"""The ValidatingAdmissionPolicy, evaluated with cel-python: it admits the training manifests
ganforge builds and denies each kind of violation."""

from __future__ import annotations

import functools
import json

from .objects import object_name
from .render import NAMESPACE


@functools.cache
def _cel_program(expression: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expression))


def _cel_eval(expression: str, activation: dict) -> object:
    """Value of a CEL expression, or the exception (an evaluation error denies with failurePolicy Fail)."""
    import celpy

    try:
        result = _cel_program(expression).evaluate(activation)
    except Exception as exc:  # celpy raises CELEvalError/CELParseError and friends
        return exc
    return RuntimeError(str(result)) if isinstance(result, celpy.CELEvalError) else result


def admission_denials(policy: dict, obj: dict) -> list[str]:
    """Messages of the policy's validations that deny ``obj`` (as the API server would evaluate them)."""
    import celpy

    variables: dict = {}
    activation = {"object": celpy.json_to_cel(obj)}
    for var in policy["spec"].get("variables") or []:
        value = _cel_eval(
            var["expression"],
            {**activation, "variables": celpy.json_to_cel({}) if not variables else celpy.celtypes.MapType(variables)},
        )
        if isinstance(value, Exception):
            return [f"variable {var['name']}: evaluation error {value}"]
        variables[celpy.celtypes.StringType(var["name"])] = value
    activation["variables"] = celpy.celtypes.MapType(variables)
    denied = []
    for validation in policy["spec"]["validations"]:
        value = _cel_eval(validation["expression"], activation)
        if (
            isinstance(value, Exception)
            or value is not True
            and not (isinstance(value, celpy.celtypes.BoolType) and bool(value))
        ):
            denied.append(
                validation.get("message", validation["expression"])
                + (f" (evaluation error: {value})" if isinstance(value, Exception) else "")
            )
    return denied


def _violations(jobs: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(engine, what, manifest) copies of the training jobs that break the policy, one way each."""

    def pod(job: dict) -> dict:
        return training_pod_specs_ref(job)[0]

    def container(job: dict) -> dict:
        return pod(job)["containers"][0]

    cases = [
        (
            "env secretKeyRef minio-root",
            lambda j: (
                container(j)
                .setdefault("env", [])
                .append(
                    {"name": "X", "valueFrom": {"secretKeyRef": {"name": "minio-root", "key": "MINIO_ROOT_PASSWORD"}}}
                )
            ),
        ),
        (
            "envFrom secretRef postgres",
            lambda j: container(j).setdefault("envFrom", []).append({"secretRef": {"name": "postgres"}}),
        ),
        (
            "secret volume mlflow-auth",
            lambda j: pod(j)["volumes"].append({"name": "x", "secret": {"secretName": "mlflow-auth"}}),
        ),
        (
            "projected volume",
            lambda j: pod(j)["volumes"].append(
                {"name": "x", "projected": {"sources": [{"secret": {"name": "minio-root"}}]}}
            ),
        ),
        ("hostPath volume", lambda j: pod(j)["volumes"].append({"name": "x", "hostPath": {"path": "/"}})),
        (
            "serviceAccountName ganforge-pipeline-runner",
            lambda j: pod(j).update(serviceAccountName="ganforge-pipeline-runner"),
        ),
        ("no serviceAccountName", lambda j: pod(j).pop("serviceAccountName")),
        ("privileged container", lambda j: container(j)["securityContext"].update(privileged=True)),
        ("added capability", lambda j: container(j)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])),
        ("hostNetwork", lambda j: pod(j).update(hostNetwork=True)),
        ("runAsNonRoot false", lambda j: pod(j)["securityContext"].update(runAsNonRoot=False)),
    ]
    out = []
    for engine, job in jobs.items():
        for what, mutate in cases:
            broken = json.loads(json.dumps(job))
            mutate(broken)
            out.append((engine, what, broken))
    pytorch = json.loads(json.dumps(jobs["pytorchjob"]))
    training_pod_specs_ref(pytorch)[0]["automountServiceAccountToken"] = True
    out.append(("pytorchjob", "automountServiceAccountToken true", pytorch))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    trainjob["spec"]["trainer"]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "minio-root", "key": "MINIO_ROOT_PASSWORD"}}}
    )
    out.append(("trainjob", "trainer env secretKeyRef minio-root", trainjob))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    trainjob["spec"]["runtimeRef"]["name"] = "my-runtime"
    out.append(("trainjob", "another runtime", trainjob))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    del trainjob["spec"]["runtimePatches"]
    out.append(("trainjob", "no runtimePatches (the runtime's own ServiceAccount)", trainjob))
    return out


def training_pod_specs_ref(job: dict) -> list[dict]:
    """Like training_pod_specs, but the pod specs inside ``job`` itself (for mutation)."""
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    return [
        rj["template"]["spec"]["template"]["spec"]
        for p in job["spec"]["runtimePatches"]
        for rj in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    ]


def admission_problems(objects: list[dict], jobs: dict[str, dict]) -> list[str]:
    """The policy admits ganforge's jobs, denies every violation, covers both kinds, and is bound here."""
    policies = [o for o in objects if o.get("kind") == "ValidatingAdmissionPolicy"]
    policy = next(
        (
            p
            for p in policies
            if any(
                "pytorchjobs" in r.get("resources", [])
                for r in p["spec"].get("matchConstraints", {}).get("resourceRules", [])
            )
        ),
        None,
    )
    if policy is None:
        return [
            "no ValidatingAdmissionPolicy matches pytorchjobs: the runner could create jobs whose pods read any Secret"
        ]
    where = object_name(policy)
    problems = []
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    for group, resource in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")):
        if not any(
            group in r["apiGroups"] and resource in r["resources"] and {"CREATE", "UPDATE"} <= set(r["operations"])
            for r in rules
        ):
            problems.append(f"{where}: does not match CREATE and UPDATE of {resource}.{group}")
    if policy["spec"].get("failurePolicy", "Fail") != "Fail":
        problems.append(f"{where}: failurePolicy must be Fail (an evaluation error must deny)")
    if "metadata" in policy and policy["metadata"].get("namespace"):
        problems.append(f"{where}: is cluster-scoped and must have no namespace")
    bindings = [
        o
        for o in objects
        if o.get("kind") == "ValidatingAdmissionPolicyBinding"
        and o["spec"].get("policyName") == policy["metadata"]["name"]
    ]
    if not any(
        "Deny" in b["spec"].get("validationActions", [])
        and (b["spec"].get("matchResources", {}).get("namespaceSelector", {}).get("matchLabels") or {}).get(
            "kubernetes.io/metadata.name"
        )
        == NAMESPACE
        for b in bindings
    ):
        problems.append(f"{where}: no binding with validationActions Deny for namespace {NAMESPACE}")
    for engine, job in jobs.items():
        for message in admission_denials(policy, job):
            problems.append(f"{where}: denies ganforge's own {engine}: {message}")
    for engine, what, broken in _violations(jobs):
        if not admission_denials(policy, broken):
            problems.append(f"{where}: admits a {engine} with {what}")
    return problems
