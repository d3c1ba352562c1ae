"""Offline checks of the Kubernetes manifests under k8s/ (``make k8s-check``).

Renders k8s/base and every k8s/overlays/* with kustomize, then checks each object:
schema (kubernetes-validate, strict, pinned Kubernetes version), Secrets hold only placeholders,
every container has resources, a hardened securityContext and a pinned image, servers have
probes, every referenced Secret/ConfigMap key exists, and kfp-launcher's providers config is
well formed and names a real Secret. Prints every problem and exits 1 if there is any.

Rendering happens in a temporary copy of k8s/ whose secrets/*.env files are written from the
committed *.env.example files, so a developer's real secrets are never read, printed or checked.
"""
from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
# Newest schema set kubernetes-validate ships that is not newer than the kubectl here (1.32).
KUBERNETES_VERSION = "1.32.0"
SECRET_PLACEHOLDER = "REPLACE_ME"
# Custom resources have no schema in kubernetes-validate; list a kind here only with a schema check of its own.
CRD_KINDS: frozenset[str] = frozenset()
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# kfp-launcher providers fields, from kubeflow/pipelines backend/src/v2/config/s3.go.
S3_DEFAULT_FIELDS = {"endpoint", "credentials", "region", "disableSSL", "forcePathStyle", "maxRetries"}
S3_SECRET_REF_FIELDS = {"secretName", "accessKeyKey", "secretKeyKey"}


class CheckError(RuntimeError):
    """The check could not run (no kustomize, a render failed); the message says what to fix."""


@dataclass(frozen=True)
class Rendered:
    """The objects one kustomize target renders to."""

    target: str
    objects: list[dict]


def kustomize_command() -> list[str]:
    """``kubectl kustomize`` if kubectl is installed, else the standalone ``kustomize build``."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise CheckError("neither kubectl nor kustomize is on PATH; install kubectl >= 1.27 (kustomize v5)")


def kustomize_targets(k8s_dir: Path) -> list[Path]:
    """k8s/base and every k8s/overlays/<name> that has a kustomization.yaml."""
    targets = [k8s_dir / "base"] + sorted((k8s_dir / "overlays").glob("*"))
    return [t for t in targets if (t / "kustomization.yaml").is_file()]


def stage_example_secrets(k8s_copy: Path) -> list[Path]:
    """Write every ``X.env`` from its committed ``X.env.example`` (replacing a real one); return them."""
    written = []
    for example in sorted(k8s_copy.rglob("*.env.example")):
        env_file = example.with_name(example.name[: -len(".example")])
        shutil.copyfile(example, env_file)
        written.append(env_file)
    return written


def render(target: Path, command: list[str]) -> list[dict]:
    """Objects of one kustomize target, in render order."""
    proc = subprocess.run([*command, str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CheckError(f"{' '.join(command)} {target} failed:\n{proc.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj]


def render_all(k8s_dir: Path = K8S_DIR) -> list[Rendered]:
    """Render base and every overlay from a temporary copy with placeholder secrets."""
    command = kustomize_command()
    with tempfile.TemporaryDirectory(prefix="k8s-check-") as tmp:
        k8s_copy = Path(tmp) / "k8s"
        shutil.copytree(k8s_dir, k8s_copy, ignore=shutil.ignore_patterns("*.env"))
        stage_example_secrets(k8s_copy)
        return [Rendered(str(t.relative_to(k8s_copy)), render(t, command)) for t in kustomize_targets(k8s_copy)]


def object_name(obj: dict) -> str:
    """``Kind/namespace/name`` for messages."""
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def schema_problems(obj: dict, version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict JSON-schema validation of one object against the pinned Kubernetes version."""
    if obj.get("kind") in CRD_KINDS:
        return []
    try:
        validated = kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{object_name(obj)}: schema {exc.version}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{object_name(obj)}: {exc.message}; add a schema check for this custom resource or remove it"]
    if validated != ".".join(version.split(".")[:2]):
        return [f"{object_name(obj)}: validated against {validated}, not the pinned {version}"]
    return []


def secret_values(secret: dict) -> dict[str, str]:
    """A Secret's values, decoded from ``data`` (base64) and ``stringData``."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def secret_problems(obj: dict) -> list[str]:
    """Every value of a Secret must be the placeholder: real credentials never live in the repo."""
    if obj.get("kind") != "Secret":
        return []
    return [f"{object_name(obj)}: key {key} holds a real-looking value; committed secrets must be "
            f"{SECRET_PLACEHOLDER} (put real values in the gitignored .env file)"
            for key, value in secret_values(obj).items() if value != SECRET_PLACEHOLDER]


def pod_spec(obj: dict) -> dict | None:
    """The pod spec of a workload object (or a bare Pod); None for other kinds."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec", {})
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def containers_of(spec: dict) -> list[dict]:
    """Init and app containers of a pod spec."""
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def image_problems(image: str) -> list[str]:
    """An image must name an explicit tag other than ``latest``, or a digest."""
    if "@sha256:" in image:
        return []
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"image {image} has no tag (defaults to :latest); pin a tag or digest"]
    if last.rsplit(":", 1)[1] == "latest":
        return [f"image {image} uses :latest; pin a tag or digest"]
    return []


def container_problems(container: dict, pod_security: dict, is_server: bool) -> list[str]:
    """Resources, hardened securityContext, pinned image and (for servers) probes of one container."""
    name = container.get("name")
    problems = [f"container {name}: {p}" for p in image_problems(container.get("image", ""))]
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(section) or {})
        if missing:
            problems.append(f"container {name}: resources.{section} lacks {', '.join(sorted(missing))}")
    sc = container.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"container {name}: securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append(f"container {name}: securityContext.capabilities.drop must include ALL")
    if not sc.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
        problems.append(f"container {name}: runAsNonRoot must be true (container or pod securityContext)")
    if sc.get("privileged"):
        problems.append(f"container {name}: privileged is not allowed")
    if is_server:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                problems.append(f"container {name}: server container needs a {probe}")
    return problems


def workload_problems(obj: dict) -> list[str]:
    """Container rules for every container of a workload; servers are long-running pods with ports."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    long_running = obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
    pod_security = spec.get("securityContext") or {}
    problems = []
    for container in containers_of(spec):
        is_server = long_running and bool(container.get("ports"))
        problems += container_problems(container, pod_security, is_server)
    return [f"{object_name(obj)}: {p}" for p in problems]


def referenced_keys(spec: dict) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret/ConfigMap a pod spec reads; key None for whole-object refs."""
    for container in containers_of(spec):
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            if "secretKeyRef" in source:
                yield "Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]
            if "configMapKeyRef" in source:
                yield "ConfigMap", source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"]
        for env_from in container.get("envFrom") or []:
            if "secretRef" in env_from:
                yield "Secret", env_from["secretRef"]["name"], None
            if "configMapRef" in env_from:
                yield "ConfigMap", env_from["configMapRef"]["name"], None
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None


def object_keys(obj: dict) -> set[str]:
    """Keys of a Secret or ConfigMap."""
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})


def reference_problems(objects: list[dict]) -> list[str]:
    """Every Secret/ConfigMap (and key) a pod reads must be rendered alongside it."""
    available = {(o["kind"], o["metadata"]["name"]): object_keys(o)
                 for o in objects if o.get("kind") in {"Secret", "ConfigMap"}}
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        for kind, name, key in referenced_keys(spec) if spec else ():
            if (kind, name) not in available:
                problems.append(f"{object_name(obj)}: reads {kind} {name}, which is not in the render")
            elif key is not None and key not in available[(kind, name)]:
                problems.append(f"{object_name(obj)}: reads key {key} of {kind} {name}, which has no such key")
    return problems


def kfp_launcher_problems(objects: list[dict]) -> list[str]:
    """kfp-launcher: an s3:// defaultPipelineRoot and an s3 provider whose secretRef names a real Secret."""
    launchers = [o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == "kfp-launcher"]
    if not launchers:
        return ["ConfigMap kfp-launcher is missing: KFP would fall back to its own default pipeline root"]
    data = launchers[0].get("data") or {}
    where = object_name(launchers[0])
    if not str(data.get("defaultPipelineRoot", "")).startswith("s3://"):
        return [f"{where}: defaultPipelineRoot must be an s3:// URI, got {data.get('defaultPipelineRoot')!r}"]
    default = ((yaml.safe_load(data.get("providers") or "") or {}).get("s3") or {}).get("default")
    if not isinstance(default, dict):
        return [f"{where}: providers has no s3.default section (see kubeflow/pipelines backend/src/v2/config/s3.go)"]
    problems = [f"{where}: providers s3.default.{k} is not a known field" for k in sorted(set(default) - S3_DEFAULT_FIELDS)]
    credentials = default.get("credentials") or {}
    if credentials.get("fromEnv"):
        return problems
    secret_ref = credentials.get("secretRef") or {}
    missing = S3_SECRET_REF_FIELDS - set(secret_ref)
    if missing:
        return problems + [f"{where}: providers s3.default.credentials.secretRef lacks {', '.join(sorted(missing))}"]
    secrets = {o["metadata"]["name"]: object_keys(o) for o in objects if o.get("kind") == "Secret"}
    name = secret_ref["secretName"]
    if name not in secrets:
        return problems + [f"{where}: secretRef names Secret {name}, which is not in the render"]
    for field in ("accessKeyKey", "secretKeyKey"):
        if secret_ref[field] not in secrets[name]:
            problems.append(f"{where}: secretRef.{field}={secret_ref[field]} is not a key of Secret {name}")
    return problems


def rendered_problems(rendered: Rendered) -> list[str]:
    """Every problem of one render, each prefixed with its kustomize target."""
    problems = []
    for obj in rendered.objects:
        problems += schema_problems(obj) + secret_problems(obj) + workload_problems(obj)
    problems += reference_problems(rendered.objects) + kfp_launcher_problems(rendered.objects)
    return [f"{rendered.target}: {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-dir", type=Path, default=K8S_DIR, help="directory holding base/ and overlays/")
    args = parser.parse_args(argv)
    try:
        renders = render_all(args.k8s_dir)
    except CheckError as exc:
        print(f"k8s-check: {exc}", file=sys.stderr)
        return 2
    problems = [p for r in renders for p in rendered_problems(r)]
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
