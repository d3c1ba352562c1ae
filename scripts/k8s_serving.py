"""Offline checks of the KServe InferenceService that serves the champion (k8s/components/serving).

Used by scripts/k8s_check.py, which treats the InferenceService's predictor as a pod spec (so the
generic container, pod-security, reference and command-line checks cover it) and calls
``serving_problems`` for what is particular to it:

* schema: the vendored CRD schema tests/schemas/inferenceservice_v1beta1.yaml (a structural
  transcription of KServe's published CRD; see tests/schemas/README.md), strict (a field the CRD
  does not know is refused, as the API server would prune it), with every embedded Kubernetes core
  type (Container, Volume, PodSecurityContext, ...) validated by kubernetes-validate's strict
  schemas of the pinned Kubernetes version;
* serving: the predictor runs ``ganforge serve --model models:/NAME@ALIAS`` of the project's image
  on the port its container declares, probed on MLflow's /ping; it reads MLFLOW_TRACKING_URI from
  the ganforge-env ConfigMap and the MLflow user from the ganforge-mlflow Secret (nothing else
  secret); its /tmp (the verified copy) is an emptyDir; its pods carry the label the base's
  mlflow-client-egress policy selects and a NetworkPolicy admits ingress on the port.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "tests" / "schemas"
CRD_SCHEMAS = {"InferenceService": SCHEMA_DIR / "inferenceservice_v1beta1.yaml"}
"""Custom resources checked against a vendored CRD schema here (k8s_check skips kubernetes-validate for them)."""
PROJECT_IMAGE = "ganforge-cpu"
MODEL_URI = re.compile(r"^models:/[A-Za-z0-9][-A-Za-z0-9_.]*(@[A-Za-z0-9][-A-Za-z0-9_]*|/[0-9]+)$")
MLFLOW_SECRET = "ganforge-mlflow"
MLFLOW_SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
MLFLOW_CLIENT_LABEL = ("ganforge.io/mlflow-client", "true")
# kubernetes-validate's Quantity has no pattern; the CRDs embed this one (controller-gen).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def predictor(obj: dict) -> dict:
    """The predictor of an InferenceService: KServe's PodSpec fields inline, plus its own."""
    return (obj.get("spec") or {}).get("predictor") or {}


@functools.cache
def _crd(kind: str) -> dict:
    return yaml.safe_load(CRD_SCHEMAS[kind].read_text())


def _strict(schema: dict) -> dict:
    """CRD schema → JSON Schema that refuses unknown fields where the API server would prune them."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-")}
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not schema.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    return s


def _core_parts(schema: dict, value, path: str = ""):
    """(path, core type, value) for every part of ``value`` the CRD types as a Kubernetes core type."""
    if "x-core-type" in schema:
        yield path, schema["x-core-type"], value
        return
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from _core_parts(sub, v, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from _core_parts(schema["items"], v, f"{path}[{i}]")


@functools.cache
def _core_definitions(version: str) -> dict:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    defs = json.loads((root / "_definitions.json").read_text())
    defs["$defs"]["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
        "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}]
    }
    return defs


def crd_schema_problems(obj: dict, version: str) -> list[str]:
    """Every error the vendored CRD schema (with the Kubernetes ``version`` core types) finds in ``obj``."""
    crd = _crd(obj["kind"])
    if obj.get("apiVersion") != f"{crd['group']}/{crd['version']}":
        return [f"apiVersion {obj.get('apiVersion')} is not {crd['group']}/{crd['version']} (the vendored schema)"]
    schema = crd["openAPIV3Schema"]
    problems = [
        f"schema {crd['group']}/{crd['version']}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}"
        for e in jsonschema.Draft7Validator(_strict(schema)).iter_errors(obj)
    ]
    defs = _core_definitions(version)
    for path, core_type, value in _core_parts(schema, obj):
        core = {"$schema": defs["$schema"], "$defs": defs["$defs"], "$ref": f"#/$defs/{core_type}"}
        validator = jsonschema.validators.validator_for(core)(core)
        problems += [
            f"schema {core_type}: {path.lstrip('.')}.{'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(value)
        ]
    return problems


def _image_name(image: str) -> str:
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def _serve_port(command: list[str]) -> tuple[str | None, str | None]:
    """(--model, --port) of a ``ganforge serve`` argv, None where absent."""
    found = {}
    for flag, value in zip(command, command[1:]):
        if flag in ("--model", "--port"):
            found[flag] = value
    return found.get("--model"), found.get("--port")


def _container_problems(container: dict, spec: dict) -> list[str]:
    name = container.get("name")
    problems = []
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if argv[:2] != ["ganforge", "serve"]:
        problems.append(f"container {name}: runs {argv[:2]}, not `ganforge serve` (the verified-copy server)")
    model, port = _serve_port(argv)
    if not model or not MODEL_URI.match(model):
        problems.append(f"container {name}: --model {model!r} is not a registry URI models:/NAME@ALIAS or /VERSION")
    ports = [p.get("containerPort") for p in container.get("ports") or []]
    if port is None or not port.isdigit() or ports != [int(port)]:
        problems.append(f"container {name}: --port {port!r} must be its one containerPort (ports: {ports})")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") not in ("/ping", "/health") or str(get.get("port")) != str(port):
            problems.append(f"container {name}: {probe} must GET /ping or /health on port {port}")
    if _image_name(container.get("image", "")) != PROJECT_IMAGE:
        problems.append(f"container {name}: image {container.get('image')} is not the project's {PROJECT_IMAGE}")
    env = {e["name"]: e for e in container.get("env") or []}
    uri = (env.get("MLFLOW_TRACKING_URI", {}).get("valueFrom") or {}).get("configMapKeyRef") or {}
    if uri.get("name") != "ganforge-env":
        problems.append(f"container {name}: MLFLOW_TRACKING_URI must come from ConfigMap ganforge-env")
    for key in sorted(MLFLOW_SECRET_KEYS):
        ref = (env.get(key, {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if (ref.get("name"), ref.get("key")) != (MLFLOW_SECRET, key):
            problems.append(f"container {name}: {key} must come from Secret {MLFLOW_SECRET} key {key}")
    other = sorted(
        e["name"]
        for e in container.get("env") or []
        if "secretKeyRef" in (e.get("valueFrom") or {}) and e["name"] not in MLFLOW_SECRET_KEYS
    )
    if other or container.get("envFrom"):
        problems.append(f"container {name}: reads secrets beyond the MLflow user ({other or 'envFrom'})")
    tmp_volumes = {v["name"] for v in spec.get("volumes") or [] if "emptyDir" in v}
    if not any(
        m.get("mountPath") == "/tmp" and m.get("name") in tmp_volumes for m in container.get("volumeMounts") or []
    ):
        problems.append(f"container {name}: /tmp (the verified model copy) must be an emptyDir mount")
    return problems


def _ingress_admits(objects: list[dict], labels: dict, port: int) -> bool:
    for policy in objects:
        if policy.get("kind") != "NetworkPolicy" or "Ingress" not in policy["spec"].get("policyTypes", []):
            continue
        selector = policy["spec"].get("podSelector", {}).get("matchLabels") or {}
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            for rule in policy["spec"].get("ingress") or []:
                if rule.get("from") and any(p.get("port") == port for p in rule.get("ports") or []):
                    return True
    return False


def serving_problems(objects: list[dict], version: str) -> list[str]:
    """Schema and serving rules of every InferenceService of a render; see the module docstring."""
    problems = []
    for obj in objects:
        if obj.get("kind") not in CRD_SCHEMAS:
            continue
        where = f"{obj['kind']}/{obj['metadata'].get('namespace', '-')}/{obj['metadata'].get('name')}"
        found = crd_schema_problems(obj, version)
        spec = predictor(obj)
        containers = spec.get("containers") or []
        if len(containers) != 1:
            found.append(f"predictor has {len(containers)} containers; one runs `ganforge serve`")
        for container in containers:
            found += _container_problems(container, spec)
        labels = spec.get("labels") or {}
        if labels.get(MLFLOW_CLIENT_LABEL[0]) != MLFLOW_CLIENT_LABEL[1]:
            found.append("predictor.labels lacks ganforge.io/mlflow-client=true (its egress to MLflow)")
        port = _serve_port(list(containers[0].get("command") or []))[1] if containers else None
        if port and port.isdigit() and not _ingress_admits(objects, labels, int(port)):
            found.append(f"no NetworkPolicy admits ingress to the predictor pods on {port} (default-deny)")
        problems += [f"{where}: {p}" for p in found]
    return problems
