"""Credentials: nothing secret on a command line, MLflow basic-auth that MLflow itself parses,
and which keys reach which bucket."""

from __future__ import annotations

import configparser
import json
import os
import re
import tempfile
from pathlib import Path

from .objects import containers_of, env_sources, find_object, object_keys, object_name, pod_spec

_CREDENTIAL_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY)", re.I)


def secret_env_names(container: dict, objects: list[dict]) -> set[str]:
    """Env vars of a container whose values come from a Secret (secretKeyRef or envFrom secretRef)."""
    keys = {o["metadata"]["name"]: object_keys(o) for o in objects if o.get("kind") == "Secret"}
    names = {e["name"] for e in container.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})}
    for env_from in container.get("envFrom") or []:
        if "secretRef" in env_from:
            names |= {env_from.get("prefix", "") + k for k in keys.get(env_from["secretRef"]["name"], ())}
    return names


def command_line_problems(obj: dict, objects: list[dict]) -> list[str]:
    """No credential on a process's command line (world-readable in /proc of the node).

    Flags ``$(VAR)`` (expanded by the kubelet into argv) of any Secret-sourced VAR, ``$VAR`` or
    ``${VAR}`` of a credential-named Secret-sourced VAR in command/args/exec probes (a shell expands
    it into a child's argv), and a plain env value that expands a credential into a URI with a
    password (``user:$(PASSWORD)@``).
    """
    spec = pod_spec(obj)
    problems = []
    for container in containers_of(spec) if spec else ():
        secret_vars = secret_env_names(container, objects)
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            argv += ((container.get(probe) or {}).get("exec") or {}).get("command") or []
        text = "\n".join(argv)
        for var in sorted(secret_vars):
            if f"$({var})" in text:
                problems.append(f"container {container['name']}: $({var}) from a Secret is on the command line")
            elif _CREDENTIAL_NAME.search(var) and re.search(r"\$\{?" + re.escape(var) + r"\b", text):
                problems.append(f"container {container['name']}: ${var} from a Secret is expanded on a command line")
        for e in container.get("env") or []:
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value") or ""):
                if var in secret_vars and _CREDENTIAL_NAME.search(var):
                    problems.append(
                        f"container {container['name']}: env {e['name']} embeds the credential {var}; "
                        "pass it in its own variable (e.g. PGPASSWORD)"
                    )
    return [f"{object_name(obj)}: {p}" for p in problems]


def mlflow_auth_problems(objects: list[dict], task_s3_secret: str, task_mlflow_secret: str) -> list[str]:
    """MLflow runs basic-auth with a config MLflow parses, its admin/secret key and S3 keys from Secrets."""
    deployment = find_object(objects, "Deployment", "mlflow")
    if deployment is None:
        return ["Deployment mlflow is missing"]
    where = object_name(deployment)
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    problems = []
    if "--app-name=basic-auth" not in argv and not any(
        a == "--app-name" and b == "basic-auth" for a, b in zip(argv, argv[1:])
    ):
        problems.append(
            f"{where}: mlflow server runs without --app-name=basic-auth: anyone who reaches it can "
            "register versions and move aliases"
        )
    env = env_sources(container)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        if not isinstance(env.get(name), tuple):
            problems.append(f"{where}: {name} must come from a Secret (secretKeyRef)")
    config_path = env.get("MLFLOW_AUTH_CONFIG_PATH")
    ini = None
    if not isinstance(config_path, str) or not config_path:
        problems.append(
            f"{where}: MLFLOW_AUTH_CONFIG_PATH is not set; MLflow would use its packaged "
            "basic_auth.ini (sqlite in the working directory)"
        )
    else:
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            directory = mount["mountPath"].rstrip("/")
            volume = volumes.get(mount["name"]) or {}
            if config_path.startswith(directory + "/") and "configMap" in volume:
                cm = find_object(objects, "ConfigMap", volume["configMap"]["name"]) or {}
                ini = (cm.get("data") or {}).get(config_path[len(directory) + 1 :])
        if ini is None:
            problems.append(f"{where}: MLFLOW_AUTH_CONFIG_PATH={config_path} is not a file of a mounted ConfigMap")
    if ini is not None:
        problems += [f"{where}: basic_auth.ini: {p}" for p in auth_ini_problems(ini)]
    s3 = env.get("AWS_SECRET_ACCESS_KEY")
    if not isinstance(s3, tuple):
        problems.append(f"{where}: AWS_SECRET_ACCESS_KEY must come from a Secret")
    elif s3[0] == task_s3_secret:
        problems.append(
            f"{where}: MLflow uses the pipeline tasks' S3 Secret {task_s3_secret}; give it its own "
            "keys so that only MLflow can write its bucket"
        )
    if not find_object(objects, "Secret", task_mlflow_secret):
        problems.append(f"Secret {task_mlflow_secret} (the pipeline's MLflow user) is not defined")
    return problems


def auth_ini_problems(text: str) -> list[str]:
    """Parse the ini with MLflow's own reader (mlflow.server.auth.config.read_auth_config)."""
    from mlflow.server.auth.config import read_auth_config

    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return [f"not an ini file: {exc}"]
    with tempfile.TemporaryDirectory(prefix="k8s-check-auth-") as tmp:
        path = Path(tmp) / "basic_auth.ini"
        path.write_text(text)
        saved = {
            k: os.environ.get(k)
            for k in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
        }
        os.environ.update(
            MLFLOW_AUTH_CONFIG_PATH=str(path), MLFLOW_AUTH_ADMIN_USERNAME="u", MLFLOW_AUTH_ADMIN_PASSWORD="p"
        )
        try:
            config = read_auth_config()
        except (KeyError, ValueError, configparser.Error) as exc:
            return [f"MLflow cannot read it: {exc!r}"]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    problems = []
    if parser.has_option("mlflow", "admin_password") or parser.has_option("mlflow", "admin_username"):
        problems.append("holds the admin account; it belongs in Secret mlflow-auth (MLFLOW_AUTH_ADMIN_*)")
    if config.default_permission != "NO_PERMISSIONS":
        problems.append(
            f"default_permission={config.default_permission}: every user would reach every experiment and "
            "model; use NO_PERMISSIONS and grant explicitly (mlflow-auth-init)"
        )
    if not config.database_uri.startswith("postgresql"):
        problems.append(f"database_uri={config.database_uri}: users must persist in Postgres, not a pod's disk")
    if re.search(r"://[^/@]*:[^/@]*@", config.database_uri):
        problems.append("database_uri holds a password; libpq reads PGPASSWORD")
    return problems


def _policy_allows(policy: dict, action: str, resource: str) -> bool:
    """IAM-style: an Allow statement names the action (or a * prefix) and the resource (or a * glob)."""

    def match(pattern: str, value: str) -> bool:
        return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), value) is not None

    allowed = False
    for statement in policy.get("Statement") or []:
        actions = statement.get("Action") or []
        resources = statement.get("Resource") or []
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if any(match(a, action) for a in actions) and any(match(r, resource) for r in resources):
            if statement.get("Effect") == "Deny":
                return False
            allowed = True
    return allowed


def bucket_access(objects: list[dict]) -> dict[str, dict[str, bool]]:
    """Secret name -> {bucket: may PutObject}, from the bucket-init Job's env, init.sh and policies."""
    cm = find_object(objects, "ConfigMap", "minio-bucket-init")
    job = find_object(objects, "Job", "minio-bucket-init")
    if cm is None or job is None:
        return {}
    data = cm.get("data") or {}
    env = env_sources(job["spec"]["template"]["spec"]["containers"][0])
    access: dict[str, dict[str, bool]] = {}
    for line in (data.get("init.sh") or "").splitlines():
        m = re.match(r'\s*user_with_policy\s+"\$(\w+)"\s+"\$\w+"\s+(\S+)\s+/config/(\S+)\s*$', line)
        if not m:
            continue
        source = env.get(m.group(1))
        policy = json.loads(data.get(m.group(3)) or "{}")
        if isinstance(source, tuple):
            access[source[0]] = {
                b: _policy_allows(policy, "s3:PutObject", f"arn:aws:s3:::{b}/x")
                for b in ("ganforge-artifacts", "mlflow")
            }
    return access


def bucket_problems(objects: list[dict], task_s3_secret: str) -> list[str]:
    """The tasks' keys write ganforge-artifacts and not mlflow; only MLflow's keys write mlflow."""
    access = bucket_access(objects)
    deployment = find_object(objects, "Deployment", "mlflow")
    mlflow_secret = None
    if deployment is not None:
        source = env_sources(deployment["spec"]["template"]["spec"]["containers"][0]).get("AWS_ACCESS_KEY_ID")
        mlflow_secret = source[0] if isinstance(source, tuple) else None
    problems = []
    if not (access.get(task_s3_secret) or {}).get("ganforge-artifacts"):
        problems.append(f"bucket-init: the user of Secret {task_s3_secret} cannot write ganforge-artifacts")
    if (access.get(task_s3_secret) or {}).get("mlflow"):
        problems.append(
            f"bucket-init: the user of Secret {task_s3_secret} (every pipeline task) can write the "
            "mlflow bucket: a task could replace a registered model's files"
        )
    if mlflow_secret is None or not (access.get(mlflow_secret) or {}).get("mlflow"):
        problems.append("bucket-init: no MinIO user with the MLflow server's keys may write the mlflow bucket")
    for secret, buckets in sorted(access.items()):
        if secret != mlflow_secret and buckets.get("mlflow"):
            problems.append(f"bucket-init: Secret {secret}'s user can write the mlflow bucket; only MLflow's may")
    return problems
