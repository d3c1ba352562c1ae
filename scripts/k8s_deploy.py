"""The only way k8s/ reaches a cluster: real secrets, no placeholders (``make k8s-secrets-init``, ``make k8s-apply``).

``secrets-init`` writes every ``k8s/base/secrets/X.env`` from its ``X.env.example``: a value that is
still a placeholder gets a generated one (random keys and passwords, fixed account names), a real
value is kept. ``render OVERLAY`` renders an overlay from the real files and refuses, naming each
offending key and the fix, any placeholder that would reach the cluster: a Secret value, an image
digest of zeros, the API server's documentation address in the egress policy. Only the local-kind
overlay may be rendered with placeholders (a laptop's throwaway cluster).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import re
import secrets
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
SECRETS_SUBDIR = Path("base") / "secrets"
# Overlays a laptop deploys to; every other overlay refuses placeholders.
LOCAL_OVERLAYS = frozenset({"local-kind"})
PLACEHOLDER = "REPLACE_ME"
# Values no deployment should run with (account names such as "postgres" are fine: only secrets are weak here).
WEAK_VALUES = frozenset({"", "changeme", "change_me", "password", "secret", "minioadmin"})
# Values that name an account: fixed, readable names (the keys and passwords are what is secret).
ACCOUNT_NAMES = {
    "POSTGRES_USER": "postgres",
    "PGUSER": "mlflow",
    "PGDATABASE": "mlflow",
    "MINIO_ROOT_USER": "ganforge-root",
    "MLFLOW_AUTH_ADMIN_USERNAME": "ganforge-admin",
    "MLFLOW_TRACKING_USERNAME": "ganforge-pipeline",
}
ZERO_DIGEST = "sha256:" + "0" * 64
# RFC 5737 documentation networks: an ipBlock there reaches nothing and marks an address to fill in.
DOCUMENTATION_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


class DeployError(RuntimeError):
    """Bad input for a deploy step; the message names the problem and the fix."""


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's secretGenerator ``envs`` reads them (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value
    return values


def is_placeholder(value: str) -> bool:
    return PLACEHOLDER in value or value.strip().lower() in WEAK_VALUES


def generated_value(key: str) -> str:
    """A fresh value for one secret key: its account name, a MinIO-style access key, or 32 random bytes."""
    if key in ACCOUNT_NAMES:
        return ACCOUNT_NAMES[key]
    if key.endswith("ACCESS_KEY_ID"):
        return "GF" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(18))
    # URL-safe: the bucket-init Job puts the MinIO root keys into an mc URL.
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (temp file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def secrets_init(k8s_dir: Path = K8S_DIR) -> list[str]:
    """Fill every placeholder of every secrets/*.env (created from its example); return ``file: KEY`` generated."""
    generated = []
    for example in sorted((k8s_dir / SECRETS_SUBDIR).glob("*.env.example")):
        env_file = example.with_name(example.name[: -len(".example")])
        current = read_env(env_file) if env_file.exists() else {}
        lines = []
        for line in example.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if line.lstrip().startswith("#") or "=" not in line:
                lines.append(line)
                continue
            value = current.get(key, PLACEHOLDER)
            if is_placeholder(value):
                value = generated_value(key)
                generated.append(f"{env_file.name}: {key}")
            lines.append(f"{key}={value}")
        # Keys a developer added beyond the example stay.
        lines += [f"{k}={v}" for k, v in current.items() if not any(ln.startswith(f"{k}=") for ln in lines)]
        write_private(env_file, "\n".join(lines) + "\n")
    return generated


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def placeholder_problems(objects: list[dict]) -> list[str]:
    """Every placeholder a rendered overlay would put on a cluster, one phrase each (no secret value shown)."""
    problems = []
    for obj in objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        if kind == "Secret":
            problems += [
                f"Secret {name} key {key} is a placeholder"
                for key, value in sorted(secret_values(obj).items())
                if is_placeholder(value)
            ]
        spec = (obj.get("spec") or {}).get("template", {}).get("spec") if kind != "NetworkPolicy" else None
        for container in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
            if container.get("image", "").endswith("@" + ZERO_DIGEST):
                problems.append(f"{kind} {name} image {container['image'].split('@')[0]} has the all-zero digest")
        if kind == "NetworkPolicy":
            for rule in obj["spec"].get("egress") or []:
                for peer in rule.get("to") or []:
                    cidr = (peer.get("ipBlock") or {}).get("cidr")
                    if cidr and any(ipaddress.ip_network(cidr, strict=False).subnet_of(n) for n in DOCUMENTATION_NETS):
                        problems.append(f"NetworkPolicy {name} egress ipBlock {cidr} is a documentation address")
    return problems


def kustomize(target: Path) -> str:
    command = ["kubectl", "kustomize"] if _which("kubectl") else ["kustomize", "build"]
    proc = subprocess.run([*command, str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeployError(f"{' '.join(command)} {target} failed: {proc.stderr.strip()}")
    return proc.stdout


def _which(name: str) -> bool:
    return any((Path(d) / name).is_file() for d in os.environ.get("PATH", "").split(os.pathsep) if d)


def render(overlay: str, k8s_dir: Path = K8S_DIR) -> str:
    """The overlay's manifests with the real secrets; DeployError if a placeholder would reach a non-local cluster."""
    target = k8s_dir / "overlays" / overlay
    if not re.fullmatch(r"[A-Za-z0-9._-]+", overlay) or not (target / "kustomization.yaml").is_file():
        known = sorted(p.name for p in (k8s_dir / "overlays").glob("*") if (p / "kustomization.yaml").is_file())
        raise DeployError(f"no overlay {overlay!r} under {k8s_dir / 'overlays'}; give one of {', '.join(known)}")
    missing = [
        e.name[: -len(".example")]
        for e in sorted((k8s_dir / SECRETS_SUBDIR).glob("*.env.example"))
        if not e.with_name(e.name[: -len(".example")]).exists()
    ]
    if missing:
        raise DeployError(f"secrets {', '.join(missing)} missing in k8s/base/secrets: run make k8s-secrets-init")
    text = kustomize(target)
    if overlay not in LOCAL_OVERLAYS:
        problems = placeholder_problems([o for o in yaml.safe_load_all(text) if isinstance(o, dict)])
        if problems:
            raise DeployError(
                f"overlays/{overlay} refuses placeholders: {'; '.join(problems)}. Fix: make k8s-secrets-init "
                f"(generates every placeholder secret), set the image digest and API server address in "
                f"k8s/overlays/{overlay}"
            )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-dir", type=Path, default=K8S_DIR, help="directory holding base/ and overlays/")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("secrets-init", help="fill every placeholder in k8s/base/secrets/*.env with a generated value")
    render_cmd = sub.add_parser("render", help="render an overlay with the real secrets, refusing placeholders")
    render_cmd.add_argument("overlay")
    args = parser.parse_args(argv)
    try:
        if args.command == "secrets-init":
            generated = secrets_init(args.k8s_dir)
            listed = f": {', '.join(generated)}" if generated else ""
            print(f"k8s-secrets-init: generated {len(generated)} value(s){listed}")
        else:
            sys.stdout.write(render(args.overlay, args.k8s_dir))
    except DeployError as exc:
        print(f"k8s-{args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
