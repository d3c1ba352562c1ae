"""Reading rendered objects: names, pod specs and containers, Secret values and referenced keys."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import k8s_serving

from .render import POD_TEMPLATE_KINDS


def object_name(obj: dict) -> str:
    """``Kind/namespace/name`` for messages."""
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def secret_values(secret: dict) -> dict[str, str]:
    """A Secret's values, decoded from ``data`` (base64) and ``stringData``."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def pod_spec(obj: dict) -> dict | None:
    """The pod spec of a workload object (or a bare Pod); None for other kinds."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec", {})
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "InferenceService":  # KServe's predictor holds PodSpec fields inline
        return k8s_serving.predictor(obj)
    return None


def containers_of(spec: dict) -> list[dict]:
    """Init and app containers of a pod spec."""
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


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


def env_sources(container: dict) -> dict[str, tuple[str, str] | str]:
    """env name -> (secret, key) for secretKeyRef, or the plain value."""
    out: dict = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = (ref["name"], ref["key"]) if ref else e.get("value", "")
    return out


def find_object(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name), None)
