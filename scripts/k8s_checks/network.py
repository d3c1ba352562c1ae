"""A small NetworkPolicy evaluator (same-cluster pods and IP addresses, TCP/UDP ports): each needed
connection allowed, each other one denied."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .objects import find_object
from .render import NAMESPACE


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, namespace) or an address outside the pod network (ip)."""

    labels: tuple = ()
    namespace: str = NAMESPACE
    ip: str = ""

    @staticmethod
    def pod(labels: dict, namespace: str = NAMESPACE) -> Endpoint:
        return Endpoint(tuple(sorted(labels.items())), namespace)


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _peer_matches(peer: dict, other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if other.ip:
        return False
    ns_labels = {"kubernetes.io/metadata.name": other.namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector"), dict(other.labels))


def _port_matches(ports: list | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], int) and p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _direction_allows(
    policies: list[dict], subject: Endpoint, other: Endpoint, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies selecting ``subject`` (in its namespace) allow this direction of traffic."""
    if subject.ip or subject.namespace != NAMESPACE:
        return True  # not governed by ganforge's policies
    key, peer_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"].get("podSelector") or {}, dict(subject.labels))
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peer_key)
            if (not peers or any(_peer_matches(peer, other, NAMESPACE) for peer in peers)) and _port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def connection_allowed(
    objects: list[dict], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Egress of the source and ingress of the destination both allow it (NetworkPolicy semantics)."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    return _direction_allows(policies, source, destination, port, protocol, "Egress") and _direction_allows(
        policies, destination, source, port, protocol, "Ingress"
    )


def _template_labels(objects: list[dict], kind: str, name: str) -> dict:
    obj = find_object(objects, kind, name)
    return dict(obj["spec"]["template"]["metadata"]["labels"]) if obj else {"missing": f"{kind}/{name}"}


def _api_server_address(objects: list[dict]) -> str:
    """The first address of the ipBlock the overlay names for the API server (kube-apiserver-egress)."""
    policy = find_object(objects, "NetworkPolicy", "kube-apiserver-egress")
    for rule in (policy or {}).get("spec", {}).get("egress") or []:
        for peer in rule.get("to") or []:
            if "ipBlock" in peer:
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
                return str(next(iter(net.hosts()), net.network_address))
    return "10.0.0.1"


def network_endpoints(objects: list[dict], jobs: dict[str, dict]) -> dict[str, Endpoint]:
    """The pods (labels as they will run) and outside addresses the network checks talk about."""
    from pipelines.kube import STORAGE_CLIENT_LABEL

    pytorch_labels = jobs["pytorchjob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    trainjob_labels = jobs["trainjob"]["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["metadata"]["labels"]
    return {
        "minio": Endpoint.pod(_template_labels(objects, "StatefulSet", "minio")),
        "postgres": Endpoint.pod(_template_labels(objects, "StatefulSet", "postgres")),
        "mlflow": Endpoint.pod(_template_labels(objects, "Deployment", "mlflow")),
        "bucket-init": Endpoint.pod(_template_labels(objects, "Job", "minio-bucket-init")),
        "mlflow-auth-init": Endpoint.pod(_template_labels(objects, "Job", "mlflow-auth-init")),
        "postgres-roles-init": Endpoint.pod(_template_labels(objects, "Job", "postgres-roles-init")),
        # A KFP v2 task pod: KFP's own label plus the one pipelines/kube.py adds.
        "kfp-task": Endpoint.pod(
            {"pipelines.kubeflow.org/v2_component": "true", STORAGE_CLIENT_LABEL[0]: STORAGE_CLIENT_LABEL[1]}
        ),
        "pytorchjob-pod": Endpoint.pod({**pytorch_labels, "training.kubeflow.org/job-name": "dcgan-abc123"}),
        "trainjob-pod": Endpoint.pod({**trainjob_labels, "jobset.sigs.k8s.io/jobset-name": "dcgan-abc123"}),
        "other-pod": Endpoint.pod({"app": "something-else"}),
        "kube-dns": Endpoint.pod({"k8s-app": "kube-dns"}, "kube-system"),
        "kfp-api": Endpoint.pod({"app": "ml-pipeline"}, "kubeflow"),
        "kfp-metadata": Endpoint.pod({"component": "metadata-grpc-server"}, "kubeflow"),
        "kube-apiserver": Endpoint(ip=_api_server_address(objects)),
        "internet": Endpoint(ip="203.0.113.7"),
        "other-namespace-pod": Endpoint.pod({"ganforge.io/storage-client": "true"}, "elsewhere"),
    }


# (source, destination, port, protocol) that must be allowed / must be denied.
REQUIRED_CONNECTIONS = [
    *[
        (pod, "kube-dns", 53, proto)
        for pod in (
            "kfp-task",
            "pytorchjob-pod",
            "trainjob-pod",
            "mlflow",
            "bucket-init",
            "mlflow-auth-init",
            "postgres-roles-init",
        )
        for proto in ("UDP", "TCP")
    ],
    ("kfp-task", "minio", 9000, "TCP"),
    ("kfp-task", "mlflow", 5000, "TCP"),
    ("kfp-task", "kfp-api", 8887, "TCP"),
    ("kfp-task", "kfp-metadata", 8080, "TCP"),
    ("kfp-task", "kube-apiserver", 443, "TCP"),
    ("kfp-task", "kube-apiserver", 6443, "TCP"),
    ("pytorchjob-pod", "minio", 9000, "TCP"),
    ("pytorchjob-pod", "mlflow", 5000, "TCP"),
    ("pytorchjob-pod", "pytorchjob-pod", 23456, "TCP"),
    ("trainjob-pod", "minio", 9000, "TCP"),
    ("trainjob-pod", "mlflow", 5000, "TCP"),
    ("trainjob-pod", "trainjob-pod", 29400, "TCP"),
    ("mlflow", "postgres", 5432, "TCP"),
    ("mlflow", "minio", 9000, "TCP"),
    ("bucket-init", "minio", 9000, "TCP"),
    ("mlflow-auth-init", "mlflow", 5000, "TCP"),
    ("postgres-roles-init", "postgres", 5432, "TCP"),
]


FORBIDDEN_CONNECTIONS = [
    ("kfp-task", "postgres", 5432, "TCP"),
    ("pytorchjob-pod", "postgres", 5432, "TCP"),
    ("trainjob-pod", "postgres", 5432, "TCP"),
    ("bucket-init", "postgres", 5432, "TCP"),
    ("mlflow-auth-init", "postgres", 5432, "TCP"),
    ("mlflow-auth-init", "minio", 9000, "TCP"),
    ("other-pod", "minio", 9000, "TCP"),
    ("other-pod", "mlflow", 5000, "TCP"),
    ("other-pod", "postgres", 5432, "TCP"),
    ("other-pod", "internet", 443, "TCP"),
    ("other-pod", "kube-dns", 5353, "UDP"),
    ("other-namespace-pod", "minio", 9000, "TCP"),
    ("other-namespace-pod", "mlflow", 5000, "TCP"),
    ("other-namespace-pod", "postgres", 5432, "TCP"),
    ("pytorchjob-pod", "internet", 443, "TCP"),
    ("pytorchjob-pod", "kube-apiserver", 443, "TCP"),
    ("trainjob-pod", "kube-apiserver", 6443, "TCP"),
    ("kfp-task", "internet", 80, "TCP"),
    ("kfp-task", "internet", 443, "TCP"),
    ("kfp-task", "internet", 6443, "TCP"),
    ("postgres-roles-init", "minio", 9000, "TCP"),
    ("postgres-roles-init", "mlflow", 5000, "TCP"),
    ("postgres-roles-init", "internet", 443, "TCP"),
    ("kfp-task", "pytorchjob-pod", 23456, "TCP"),
    ("minio", "internet", 443, "TCP"),
    ("postgres", "internet", 443, "TCP"),
    ("mlflow", "internet", 443, "TCP"),
    ("minio", "mlflow", 5000, "TCP"),
    ("postgres", "minio", 9000, "TCP"),
    ("mlflow", "kube-apiserver", 443, "TCP"),
    ("bucket-init", "kube-apiserver", 443, "TCP"),
    # Nothing listens in task pods; only the default deny closes them to other namespaces.
    ("other-namespace-pod", "kfp-task", 8080, "TCP"),
    ("other-namespace-pod", "mlflow-auth-init", 8080, "TCP"),
]


def network_problems(objects: list[dict], jobs: dict[str, dict]) -> list[str]:
    """Default deny in both directions, each needed connection allowed, the others denied."""
    problems = []
    if not any(
        o.get("kind") == "NetworkPolicy"
        and o["spec"].get("podSelector") in ({}, None)
        and {"Ingress", "Egress"} <= set(o["spec"].get("policyTypes") or [])
        and not o["spec"].get("ingress")
        and not o["spec"].get("egress")
        for o in objects
    ):
        problems.append("no default-deny NetworkPolicy (podSelector {}, policyTypes Ingress and Egress, no rules)")
    endpoints = network_endpoints(objects, jobs)
    for src, dst, port, proto in REQUIRED_CONNECTIONS:
        if not connection_allowed(objects, endpoints[src], endpoints[dst], port, proto):
            problems.append(f"NetworkPolicies block {src} -> {dst}:{port}/{proto}, which ganforge needs")
    for src, dst, port, proto in FORBIDDEN_CONNECTIONS:
        if connection_allowed(objects, endpoints[src], endpoints[dst], port, proto):
            problems.append(f"NetworkPolicies allow {src} -> {dst}:{port}/{proto}")
    return problems
