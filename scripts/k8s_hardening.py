"""Cluster hardening checks of ``make k8s-check`` beside scripts/k8s_check.py's own.

* checkov (a maintained scanner, its own venv .venv-checkov) runs over every render; each finding
  is fixed or listed, with a one-line reason, in k8s/checkov-skips.yaml for exactly the resources
  and targets it is accepted for.
* Overlays that deploy to a real cluster (every one but local-kind) pin every image by digest.
* No egress ipBlock wider than /16 (nothing reaches the internet by address).
* MLflow logs in to Postgres as its own role (Secret mlflow-db), never with the superuser's
  Secret postgres, which only Postgres and the postgres-roles-init Job read.
* The developer's real secrets/*.env, when present, hold no placeholder for any overlay but
  local-kind (their values are never printed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIPS_FILE = REPO_ROOT / "k8s" / "checkov-skips.yaml"
CHECKOV_VENV = REPO_ROOT / ".venv-checkov"
LOCAL_TARGETS = frozenset({"overlays/local-kind"})
# Targets that are applied to a real cluster: base is rendered only to check it, local-kind runs on a laptop.
CLUSTER_TARGETS_EXCLUDED = frozenset({"base"}) | LOCAL_TARGETS
MIN_IPV4_PREFIX = 16
SUPERUSER_SECRET = "postgres"
SUPERUSER_READERS = {("StatefulSet", "postgres"), ("Job", "postgres-roles-init")}


class CheckovMissing(RuntimeError):
    """checkov is not installed; the message says how to install it."""


def checkov_binary() -> str:
    """GANFORGE_CHECKOV, else .venv-checkov/bin/checkov (make checkov), else checkov on PATH."""
    for candidate in (os.environ.get("GANFORGE_CHECKOV"), str(CHECKOV_VENV / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("checkov")
    if found:
        return found
    raise CheckovMissing("checkov is not installed: run make checkov (its own venv, .venv-checkov)")


def checkov_findings(objects: list[dict], binary: str) -> list[tuple[str, str, str]]:
    """(check id, resource as checkov names it, check name) of every failed checkov check."""
    with tempfile.TemporaryDirectory(prefix="k8s-checkov-") as tmp:
        manifest = Path(tmp) / "rendered.yaml"
        manifest.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        proc = subprocess.run(
            [binary, "-f", str(manifest), "--framework", "kubernetes", "-o", "json", "--quiet", "--skip-download"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        )
    # Exit status 1 means "findings"; anything else, or no JSON, is checkov failing to run.
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        tail = proc.stderr.strip()[-500:]
        raise RuntimeError(f"checkov exited {proc.returncode} without a JSON report: {tail}") from exc
    reports = report if isinstance(report, list) else [report]
    # A file checkov cannot parse would pass with no findings.
    if any((r.get("summary") or r).get("parsing_errors") for r in reports):
        raise RuntimeError(f"checkov could not parse the render: {proc.stdout[-500:]}")
    return sorted(
        (f["check_id"], f["resource"], f["check_name"])
        for r in reports
        for f in (r.get("results") or {}).get("failed_checks") or []
    )


def load_skips(path: Path = SKIPS_FILE) -> list[dict]:
    return yaml.safe_load(path.read_text()) or []


def skip_file_problems(skips: list[dict]) -> list[str]:
    """Every entry names a check, the resources it covers and a one-line reason."""
    problems = []
    for i, skip in enumerate(skips):
        where = f"{SKIPS_FILE.name} entry {i + 1} ({skip.get('id')})"
        if not str(skip.get("id", "")).startswith("CKV"):
            problems.append(f"{where}: id must be a checkov check id")
        why = str(skip.get("why") or "").strip()
        if not why or "\n" in why:
            problems.append(f"{where}: needs a one-line why")
        if not skip.get("resources"):
            problems.append(f"{where}: list the resources it is accepted for")
    return problems


def checkov_problems(target: str, findings: list[tuple[str, str, str]], skips: list[dict]) -> list[str]:
    """Findings no skip entry covers for this target and resource."""
    problems = []
    for check_id, resource, name in findings:
        covered = any(
            s.get("id") == check_id
            and resource in (s.get("resources") or [])
            and target not in (s.get("except_targets") or [])
            for s in skips
        )
        if not covered:
            problems.append(
                f"checkov {check_id} ({name}) on {resource}: fix it, or justify it in k8s/{SKIPS_FILE.name}"
            )
    return problems


def image_digest_problems(target: str, objects: list[dict], pod_spec, containers_of) -> list[str]:
    """A cluster overlay runs no image by tag alone."""
    if target in CLUSTER_TARGETS_EXCLUDED:
        return []
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        for container in containers_of(spec) if spec else ():
            if "@sha256:" not in container.get("image", ""):
                problems.append(
                    f"{obj['kind']}/{obj['metadata']['name']}: image {container.get('image')} is pinned by tag only; "
                    "a cluster overlay pins every image by digest (kustomize images: digest:)"
                )
    return problems


def egress_block_problems(objects: list[dict]) -> list[str]:
    """No NetworkPolicy egress ipBlock wider than /16 (0.0.0.0/0 is the whole internet)."""
    problems = []
    for obj in objects:
        if obj.get("kind") != "NetworkPolicy":
            continue
        for rule in obj["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                cidr = (peer.get("ipBlock") or {}).get("cidr")
                if not cidr:
                    continue
                net = ipaddress.ip_network(cidr, strict=False)
                if net.prefixlen < (MIN_IPV4_PREFIX if net.version == 4 else 48):
                    problems.append(
                        f"NetworkPolicy/{obj['metadata']['name']}: egress ipBlock {cidr} is wider than a cluster "
                        "service; name the service's addresses (the API server's endpoints)"
                    )
    return problems


def database_role_problems(objects: list[dict], pod_spec, referenced_keys) -> list[str]:
    """Only Postgres and the postgres-roles-init Job read the superuser's Secret; MLflow has its own role."""
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        reads = {name for kind, name, _ in referenced_keys(spec) if kind == "Secret"}
        if SUPERUSER_SECRET in reads and (obj["kind"], obj["metadata"]["name"]) not in SUPERUSER_READERS:
            problems.append(
                f"{obj['kind']}/{obj['metadata']['name']}: reads Secret {SUPERUSER_SECRET} (the Postgres superuser); "
                "MLflow logs in with its own role from Secret mlflow-db"
            )
    if not any(o.get("kind") == "Job" and o["metadata"]["name"] == "postgres-roles-init" for o in objects):
        problems.append("Job postgres-roles-init is missing: nothing creates MLflow's non-superuser database role")
    return problems


def real_secret_problems(k8s_dir: Path, targets: list[str]) -> list[str]:
    """A developer's secrets/*.env with a placeholder left: refused for every target but base and local-kind."""
    import k8s_deploy

    env_files = sorted((k8s_dir / k8s_deploy.SECRETS_SUBDIR).glob("*.env"))
    if not env_files:
        return []
    left = [
        f"k8s/base/secrets/{f.name}: {key}"
        for f in env_files
        for key, value in k8s_deploy.read_env(f).items()
        if k8s_deploy.is_placeholder(value)
    ]
    if not left:
        return []
    return [
        f"{t}: secrets still hold placeholders ({', '.join(left)}); run make k8s-secrets-init (generates them)"
        for t in targets
        if t not in CLUSTER_TARGETS_EXCLUDED
    ]
