"""Offline checks of the Kubernetes manifests under k8s/ (``make k8s-check``).

Renders k8s/base and every k8s/overlays/* with kustomize, then checks each object:
schema (kubernetes-validate, strict, pinned Kubernetes version), Secrets hold only placeholders,
every container has resources, a hardened securityContext and a pinned image, servers have
probes, every referenced Secret/ConfigMap key exists, and kfp-launcher's providers config is
well formed and names a real Secret. Then the security properties of the namespace:

* admission: the ValidatingAdmissionPolicy's CEL (evaluated with cel-python) admits the
  TrainJob/PyTorchJob manifests ganforge.platform.cluster_jobs builds and denies each kind of violation
  (a Secret other than ganforge-s3/ganforge-mlflow, hostPath/projected volumes, another
  ServiceAccount, privileged, ...); its binding denies in this namespace;
* pod security: every pod of the render and of the training manifests meets the Pod Security
  Standard "restricted" and mounts no ServiceAccount token; the namespace enforces "baseline";
  every compiled pipeline task runs as uid 1000, non-root;
* network: a default-deny policy, and a small NetworkPolicy evaluator shows each needed
  connection allowed and each other one (Postgres from anything but MLflow, the internet, ...)
  denied;
* credentials: no Secret-sourced variable on a command line, the Secrets the pipeline tasks
  (pipelines/kube.py) and training pods reference exist with their keys, MLflow runs basic-auth
  with a config MLflow itself parses, and only the MLflow server's keys reach the mlflow bucket.

Prints every problem and exits 1 if there is any.

Rendering happens in a temporary copy of k8s/ whose secrets/*.env files are written from the
committed *.env.example files, so a developer's real secrets are never rendered or printed; they are
only read to report placeholders left in them (scripts/k8s_hardening.py, which also runs checkov).

The checks live in scripts/k8s_checks/, one module per concern; their public names are re-exported
here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import k8s_hardening
import k8s_serving
from k8s_checks import K8S_DIR, REPO_ROOT
from k8s_checks.admission import _violations, admission_denials, admission_problems, training_pod_specs_ref
from k8s_checks.credentials import (
    auth_ini_problems,
    bucket_access,
    bucket_problems,
    command_line_problems,
    mlflow_auth_problems,
    secret_env_names,
)
from k8s_checks.network import (
    FORBIDDEN_CONNECTIONS,
    REQUIRED_CONNECTIONS,
    Endpoint,
    connection_allowed,
    network_endpoints,
    network_problems,
)
from k8s_checks.objects import (
    containers_of,
    env_sources,
    find_object,
    object_keys,
    object_name,
    pod_spec,
    referenced_keys,
    secret_values,
)
from k8s_checks.pod_security import (
    RESTRICTED_VOLUME_TYPES,
    pod_security_problems,
    restricted_problems,
    task_security_problems,
)
from k8s_checks.render import (
    CRD_KINDS,
    KUBERNETES_VERSION,
    NAMESPACE,
    POD_TEMPLATE_KINDS,
    SECRET_PLACEHOLDER,
    CheckError,
    Rendered,
    kustomize_command,
    kustomize_targets,
    render,
    render_all,
    stage_example_secrets,
)
from k8s_checks.runtime import (
    Runtime,
    compiled_task_settings,
    runtime_secret_problems,
    training_job_manifests,
    training_pod_specs,
)
from k8s_checks.workloads import (
    S3_DEFAULT_FIELDS,
    S3_SECRET_REF_FIELDS,
    container_problems,
    image_problems,
    kfp_launcher_problems,
    reference_problems,
    schema_problems,
    secret_problems,
    workload_problems,
)

__all__ = [
    "CRD_KINDS",
    "CheckError",
    "Endpoint",
    "FORBIDDEN_CONNECTIONS",
    "K8S_DIR",
    "KUBERNETES_VERSION",
    "NAMESPACE",
    "POD_TEMPLATE_KINDS",
    "REPO_ROOT",
    "REQUIRED_CONNECTIONS",
    "RESTRICTED_VOLUME_TYPES",
    "Rendered",
    "Runtime",
    "S3_DEFAULT_FIELDS",
    "S3_SECRET_REF_FIELDS",
    "SECRET_PLACEHOLDER",
    "_violations",
    "admission_denials",
    "admission_problems",
    "auth_ini_problems",
    "bucket_access",
    "bucket_problems",
    "command_line_problems",
    "compiled_task_settings",
    "connection_allowed",
    "container_problems",
    "containers_of",
    "env_sources",
    "find_object",
    "image_problems",
    "kfp_launcher_problems",
    "kustomize_command",
    "kustomize_targets",
    "mlflow_auth_problems",
    "network_endpoints",
    "network_problems",
    "object_keys",
    "object_name",
    "pod_security_problems",
    "pod_spec",
    "reference_problems",
    "referenced_keys",
    "render",
    "render_all",
    "restricted_problems",
    "runtime_secret_problems",
    "schema_problems",
    "secret_env_names",
    "secret_problems",
    "secret_values",
    "stage_example_secrets",
    "task_security_problems",
    "training_job_manifests",
    "training_pod_specs",
    "training_pod_specs_ref",
    "workload_problems",
]


def rendered_problems(rendered: Rendered, runtime: Runtime | None = None) -> list[str]:
    """Every problem of one render, each prefixed with its kustomize target."""
    from pipelines.kube import ClusterSettings

    runtime = runtime or Runtime.build()
    settings = ClusterSettings()
    objects = rendered.objects
    problems = []
    for obj in objects:
        problems += schema_problems(obj) + secret_problems(obj) + workload_problems(obj)
        problems += command_line_problems(obj, objects)
    problems += reference_problems(objects) + kfp_launcher_problems(objects)
    problems += runtime_secret_problems(objects, runtime.jobs, runtime.executors)
    problems += mlflow_auth_problems(objects, settings.s3_secret, settings.mlflow_secret)
    problems += bucket_problems(objects, settings.s3_secret)
    problems += pod_security_problems(objects, runtime.jobs) + task_security_problems(runtime.executors)
    problems += admission_problems(objects, runtime.jobs) + network_problems(objects, runtime.jobs)
    problems += k8s_hardening.image_digest_problems(rendered.target, objects, pod_spec, containers_of)
    problems += k8s_hardening.egress_block_problems(objects)
    problems += k8s_hardening.database_role_problems(objects, pod_spec, referenced_keys)
    problems += k8s_serving.serving_problems(objects, KUBERNETES_VERSION)
    return [f"{rendered.target}: {p}" for p in problems]


def scanner_problems(renders: list[Rendered], skips: list[dict] | None = None) -> list[str]:
    """checkov's findings over every render that k8s/checkov-skips.yaml does not justify."""
    binary = k8s_hardening.checkov_binary()
    skips = k8s_hardening.load_skips() if skips is None else skips
    problems = k8s_hardening.skip_file_problems(skips)
    for r in renders:
        findings = k8s_hardening.checkov_findings(r.objects, binary)
        problems += [f"{r.target}: {p}" for p in k8s_hardening.checkov_problems(r.target, findings, skips)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-dir", type=Path, default=K8S_DIR, help="directory holding base/ and overlays/")
    args = parser.parse_args(argv)
    try:
        renders = render_all(args.k8s_dir)
    except CheckError as exc:
        print(f"k8s-check: {exc}", file=sys.stderr)
        return 2
    runtime = Runtime.build()
    problems = [p for r in renders for p in rendered_problems(r, runtime)]
    problems += k8s_hardening.real_secret_problems(args.k8s_dir, [r.target for r in renders])
    try:
        problems += scanner_problems(renders)
    except k8s_hardening.CheckovMissing as exc:
        print(f"k8s-check: {exc}", file=sys.stderr)
        return 2
    for r in renders:
        print(f"{r.target}: {len(r.objects)} objects rendered")
    if problems:
        print(f"k8s-check: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"k8s-check: OK ({len(renders)} targets, schemas of Kubernetes {KUBERNETES_VERSION}, strict)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
