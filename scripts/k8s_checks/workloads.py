"""Per-object checks: schemas, placeholder Secrets, containers (resources, securityContext, pinned
images, probes), referenced Secret/ConfigMap keys and the kfp-launcher providers config."""

from __future__ import annotations

import kubernetes_validate
import yaml

from .objects import containers_of, object_keys, object_name, pod_spec, referenced_keys, secret_values
from .render import CRD_KINDS, KUBERNETES_VERSION, SECRET_PLACEHOLDER

# kfp-launcher providers fields, from kubeflow/pipelines backend/src/v2/config/s3.go.
S3_DEFAULT_FIELDS = {"endpoint", "credentials", "region", "disableSSL", "forcePathStyle", "maxRetries"}


S3_SECRET_REF_FIELDS = {"secretName", "accessKeyKey", "secretKeyKey"}


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


def secret_problems(obj: dict) -> list[str]:
    """Every value of a Secret must be the placeholder: real credentials never live in the repo."""
    if obj.get("kind") != "Secret":
        return []
    return [
        f"{object_name(obj)}: key {key} holds a real-looking value; committed secrets must be "
        f"{SECRET_PLACEHOLDER} (put real values in the gitignored .env file)"
        for key, value in secret_values(obj).items()
        if value != SECRET_PLACEHOLDER
    ]


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
    long_running = obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "InferenceService"}
    pod_security = spec.get("securityContext") or {}
    problems = []
    for container in containers_of(spec):
        is_server = long_running and bool(container.get("ports"))
        problems += container_problems(container, pod_security, is_server)
    return [f"{object_name(obj)}: {p}" for p in problems]


def reference_problems(objects: list[dict]) -> list[str]:
    """Every Secret/ConfigMap (and key) a pod reads must be rendered alongside it."""
    available = {
        (o["kind"], o["metadata"]["name"]): object_keys(o) for o in objects if o.get("kind") in {"Secret", "ConfigMap"}
    }
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
    problems = [
        f"{where}: providers s3.default.{k} is not a known field" for k in sorted(set(default) - S3_DEFAULT_FIELDS)
    ]
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
