"""Rendering k8s/ with kustomize, from a temporary copy whose secrets come from the committed examples."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import k8s_serving
import yaml

from . import K8S_DIR

NAMESPACE = "ganforge"


# Newest schema set kubernetes-validate ships that is not newer than the kubectl here (1.32).
KUBERNETES_VERSION = "1.32.0"


SECRET_PLACEHOLDER = "REPLACE_ME"


# Custom resources have no schema in kubernetes-validate; list a kind here only with a schema check of its own.
CRD_KINDS: frozenset[str] = frozenset(k8s_serving.CRD_SCHEMAS)


POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


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
