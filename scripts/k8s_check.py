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
"""

from __future__ import annotations

import argparse
import base64
import configparser
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import k8s_hardening
import k8s_serving
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
for _path in (REPO_ROOT, REPO_ROOT / "src"):  # pipelines.kube and ganforge, also without an installed package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
NAMESPACE = "ganforge"
# Newest schema set kubernetes-validate ships that is not newer than the kubectl here (1.32).
KUBERNETES_VERSION = "1.32.0"
SECRET_PLACEHOLDER = "REPLACE_ME"
# Custom resources have no schema in kubernetes-validate; list a kind here only with a schema check of its own.
CRD_KINDS: frozenset[str] = frozenset(k8s_serving.CRD_SCHEMAS)
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
    return [
        f"{object_name(obj)}: key {key} holds a real-looking value; committed secrets must be "
        f"{SECRET_PLACEHOLDER} (put real values in the gitignored .env file)"
        for key, value in secret_values(obj).items()
        if value != SECRET_PLACEHOLDER
    ]


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


# ---------------------------------------------------------------------------------------------
# What ganforge itself creates at run time (not in the render): the training job manifests of
# ganforge.platform.cluster_jobs and the Kubernetes settings of the pipeline tasks (pipelines/kube.py).


def training_job_manifests() -> dict[str, dict]:
    """The TrainJob and PyTorchJob the train step would create (2 nodes, GPUs, as cluster_train sets them)."""
    from ganforge.config import build_config
    from ganforge.platform.cluster_jobs import manifest, spec_from_config
    from ganforge.platform.cluster_train import (
        MLFLOW_SECRET,
        MLFLOW_SECRET_KEYS,
        S3_SECRET,
        S3_SECRET_KEYS,
        TRAINING_SERVICE_ACCOUNT,
    )
    from ganforge.platform.gpu_nodes import GPU_TOLERATION

    cfg = build_config("dcgan", "tiny", {})
    secrets = {**{k: (S3_SECRET, k) for k in S3_SECRET_KEYS}, **{k: (MLFLOW_SECRET, k) for k in MLFLOW_SECRET_KEYS}}
    out = {}
    for engine in ("trainjob", "pytorchjob"):
        spec = spec_from_config(
            cfg,
            image="registry.example.com/ganforge-gpu:0.1.0",
            namespace=NAMESPACE,
            data_uri="s3://ganforge-artifacts/d",
            out_uri="s3://ganforge-artifacts/o",
            engine=engine,
            gpus_per_node=2,
            nnodes=2,
            name="dcgan-abc123",
            env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
            env_from_secrets=secrets,
            tolerations=[GPU_TOLERATION],
            service_account=TRAINING_SERVICE_ACCOUNT,
        )
        out[engine] = manifest(spec)
    return out


def training_pod_specs(job: dict) -> list[dict]:
    """Pod specs of a training job; for a TrainJob the patched pod with the trainer's env merged in."""
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    specs = []
    for patch in job["spec"].get("runtimePatches") or []:
        for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            spec = json.loads(json.dumps(rj["template"]["spec"]["template"]["spec"]))
            for c in spec.get("containers") or []:
                c.setdefault("env", []).extend(job["spec"]["trainer"].get("env") or [])
            specs.append(spec)
    return specs


def compiled_task_settings() -> dict[str, dict]:
    """executor name -> kubernetes platform settings of the compiled dcgan pipeline (KFP IR)."""
    from kfp import compiler

    from pipelines.factory import build_pipeline

    with tempfile.TemporaryDirectory(prefix="k8s-check-kfp-") as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(build_pipeline("dcgan", "full"), str(path))
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    platform = next(d for d in docs if "platforms" in d)
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


# ---------------------------------------------------------------------------------------------
# Credentials: referenced Secrets exist, nothing secret on a command line, MLflow auth, S3 users.


def runtime_secret_problems(objects: list[dict], jobs: dict[str, dict], executors: dict[str, dict]) -> list[str]:
    """Every Secret/key the pipeline tasks and the training pods reference must be in the render."""
    secrets = {o["metadata"]["name"]: object_keys(o) for o in objects if o.get("kind") == "Secret"}
    problems = []
    for executor, settings in sorted(executors.items()):
        for ref in settings.get("secretAsEnv") or []:
            name = ref.get("secretName") or (ref.get("secretNameParameter") or {}).get("runtimeValue", {}).get(
                "constant"
            )
            for pair in ref.get("keyToEnv") or []:
                if name not in secrets:
                    problems.append(f"pipeline task {executor}: reads Secret {name}, which k8s/ does not define")
                elif pair["secretKey"] not in secrets[name]:
                    problems.append(
                        f"pipeline task {executor}: reads key {pair['secretKey']} of Secret {name}, "
                        "which has no such key"
                    )
                if ref.get("optional"):
                    problems.append(f"pipeline task {executor}: Secret {name} is optional; MLflow's auth needs it")
    for engine, job in jobs.items():
        for spec in training_pod_specs(job):
            for kind, name, key in referenced_keys(spec):
                if kind == "Secret" and name not in secrets:
                    problems.append(f"{engine} pods: read Secret {name}, which k8s/ does not define")
                elif kind == "Secret" and key is not None and key not in secrets[name]:
                    problems.append(f"{engine} pods: read key {key} of Secret {name}, which has no such key")
    return problems


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


def _env_sources(container: dict) -> dict[str, tuple[str, str] | str]:
    """env name -> (secret, key) for secretKeyRef, or the plain value."""
    out: dict = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = (ref["name"], ref["key"]) if ref else e.get("value", "")
    return out


def _find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name), None)


def mlflow_auth_problems(objects: list[dict], task_s3_secret: str, task_mlflow_secret: str) -> list[str]:
    """MLflow runs basic-auth with a config MLflow parses, its admin/secret key and S3 keys from Secrets."""
    deployment = _find(objects, "Deployment", "mlflow")
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
    env = _env_sources(container)
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
                cm = _find(objects, "ConfigMap", volume["configMap"]["name"]) or {}
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
    if not _find(objects, "Secret", task_mlflow_secret):
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
    cm = _find(objects, "ConfigMap", "minio-bucket-init")
    job = _find(objects, "Job", "minio-bucket-init")
    if cm is None or job is None:
        return {}
    data = cm.get("data") or {}
    env = _env_sources(job["spec"]["template"]["spec"]["containers"][0])
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
    deployment = _find(objects, "Deployment", "mlflow")
    mlflow_secret = None
    if deployment is not None:
        source = _env_sources(deployment["spec"]["template"]["spec"]["containers"][0]).get("AWS_ACCESS_KEY_ID")
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


# ---------------------------------------------------------------------------------------------
# Pod security: Pod Security Standard "restricted" (v1.32), and no ServiceAccount token.

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(spec: dict, *, token_needed: bool = False) -> list[str]:
    """Rules of the "restricted" Pod Security Standard that a pod spec (or a pod patch) breaks."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is not allowed")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {', '.join(sorted(kinds))} is not allowed")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad = [
            c["name"]
            for c in containers_of(spec)
            if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
            not in ("RuntimeDefault", "Localhost")
        ]
        if bad:
            problems.append(f"seccompProfile RuntimeDefault/Localhost missing (pod and containers {bad})")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for c in containers_of(spec):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"container {name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"container {name}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"container {name}: capabilities.add {caps['add']} is not allowed")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"container {name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"container {name}: runAsUser 0")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"container {name}: hostPort is not allowed")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name}: readOnlyRootFilesystem must be true (emptyDir for /tmp)")
    if not token_needed and spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false (nothing here talks to the Kubernetes API)")
    return problems


def pod_security_problems(objects: list[dict], jobs: dict[str, dict]) -> list[str]:
    """Every pod of the render and of the training jobs meets "restricted"; the namespace enforces baseline."""
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            problems += [f"{object_name(obj)}: {p}" for p in restricted_problems(spec)]
    service_accounts = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ServiceAccount"}
    for engine, job in jobs.items():
        for spec in training_pod_specs(job):
            # TrainJob's runtime patch cannot carry automountServiceAccountToken: the SA decides.
            sa = service_accounts.get(spec.get("serviceAccountName", ""))
            if sa is None:
                problems.append(f"{engine} pods: ServiceAccount {spec.get('serviceAccountName')!r} is not in k8s/")
            elif job["kind"] == "TrainJob" and sa.get("automountServiceAccountToken") is not False:
                problems.append(f"{engine} pods: ServiceAccount {sa['metadata']['name']} mounts its token")
            problems += [
                f"{engine} pods: {p}" for p in restricted_problems(spec, token_needed=job["kind"] == "TrainJob")
            ]
    namespace = _find(objects, "Namespace", NAMESPACE)
    labels = (namespace or {}).get("metadata", {}).get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") not in ("baseline", "restricted"):
        problems.append(f"Namespace {NAMESPACE}: pod-security.kubernetes.io/enforce must be baseline or restricted")
    if labels.get("pod-security.kubernetes.io/warn") != "restricted":
        problems.append(f"Namespace {NAMESPACE}: pod-security.kubernetes.io/warn must be restricted")
    return problems


def task_security_problems(executors: dict[str, dict]) -> list[str]:
    """Every compiled pipeline task runs as the non-root uid 1000 and carries the storage-client label."""
    problems = []
    for executor, settings in sorted(executors.items()):
        sc = settings.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") and str(sc.get("runAsUser")) == "1000"):
            problems.append(f"pipeline task {executor}: securityContext runAsNonRoot/runAsUser 1000 missing ({sc})")
        labels = (settings.get("podMetadata") or {}).get("labels") or {}
        if labels.get("ganforge.io/storage-client") != "true":
            problems.append(
                f"pipeline task {executor}: label ganforge.io/storage-client=true missing "
                "(NetworkPolicies admit it to MinIO and MLflow)"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Admission: evaluate the ValidatingAdmissionPolicy's CEL with cel-python.


@functools.cache
def _cel_program(expression: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expression))


def _cel_eval(expression: str, activation: dict) -> object:
    """Value of a CEL expression, or the exception (an evaluation error denies with failurePolicy Fail)."""
    import celpy

    try:
        result = _cel_program(expression).evaluate(activation)
    except Exception as exc:  # celpy raises CELEvalError/CELParseError and friends
        return exc
    return RuntimeError(str(result)) if isinstance(result, celpy.CELEvalError) else result


def admission_denials(policy: dict, obj: dict) -> list[str]:
    """Messages of the policy's validations that deny ``obj`` (as the API server would evaluate them)."""
    import celpy

    variables: dict = {}
    activation = {"object": celpy.json_to_cel(obj)}
    for var in policy["spec"].get("variables") or []:
        value = _cel_eval(
            var["expression"],
            {**activation, "variables": celpy.json_to_cel({}) if not variables else celpy.celtypes.MapType(variables)},
        )
        if isinstance(value, Exception):
            return [f"variable {var['name']}: evaluation error {value}"]
        variables[celpy.celtypes.StringType(var["name"])] = value
    activation["variables"] = celpy.celtypes.MapType(variables)
    denied = []
    for validation in policy["spec"]["validations"]:
        value = _cel_eval(validation["expression"], activation)
        if (
            isinstance(value, Exception)
            or value is not True
            and not (isinstance(value, celpy.celtypes.BoolType) and bool(value))
        ):
            denied.append(
                validation.get("message", validation["expression"])
                + (f" (evaluation error: {value})" if isinstance(value, Exception) else "")
            )
    return denied


def _violations(jobs: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(engine, what, manifest) copies of the training jobs that break the policy, one way each."""

    def pod(job: dict) -> dict:
        return training_pod_specs_ref(job)[0]

    def container(job: dict) -> dict:
        return pod(job)["containers"][0]

    cases = [
        (
            "env secretKeyRef minio-root",
            lambda j: (
                container(j)
                .setdefault("env", [])
                .append(
                    {"name": "X", "valueFrom": {"secretKeyRef": {"name": "minio-root", "key": "MINIO_ROOT_PASSWORD"}}}
                )
            ),
        ),
        (
            "envFrom secretRef postgres",
            lambda j: container(j).setdefault("envFrom", []).append({"secretRef": {"name": "postgres"}}),
        ),
        (
            "secret volume mlflow-auth",
            lambda j: pod(j)["volumes"].append({"name": "x", "secret": {"secretName": "mlflow-auth"}}),
        ),
        (
            "projected volume",
            lambda j: pod(j)["volumes"].append(
                {"name": "x", "projected": {"sources": [{"secret": {"name": "minio-root"}}]}}
            ),
        ),
        ("hostPath volume", lambda j: pod(j)["volumes"].append({"name": "x", "hostPath": {"path": "/"}})),
        (
            "serviceAccountName ganforge-pipeline-runner",
            lambda j: pod(j).update(serviceAccountName="ganforge-pipeline-runner"),
        ),
        ("no serviceAccountName", lambda j: pod(j).pop("serviceAccountName")),
        ("privileged container", lambda j: container(j)["securityContext"].update(privileged=True)),
        ("added capability", lambda j: container(j)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])),
        ("hostNetwork", lambda j: pod(j).update(hostNetwork=True)),
        ("runAsNonRoot false", lambda j: pod(j)["securityContext"].update(runAsNonRoot=False)),
    ]
    out = []
    for engine, job in jobs.items():
        for what, mutate in cases:
            broken = json.loads(json.dumps(job))
            mutate(broken)
            out.append((engine, what, broken))
    pytorch = json.loads(json.dumps(jobs["pytorchjob"]))
    training_pod_specs_ref(pytorch)[0]["automountServiceAccountToken"] = True
    out.append(("pytorchjob", "automountServiceAccountToken true", pytorch))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    trainjob["spec"]["trainer"]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "minio-root", "key": "MINIO_ROOT_PASSWORD"}}}
    )
    out.append(("trainjob", "trainer env secretKeyRef minio-root", trainjob))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    trainjob["spec"]["runtimeRef"]["name"] = "my-runtime"
    out.append(("trainjob", "another runtime", trainjob))
    trainjob = json.loads(json.dumps(jobs["trainjob"]))
    del trainjob["spec"]["runtimePatches"]
    out.append(("trainjob", "no runtimePatches (the runtime's own ServiceAccount)", trainjob))
    return out


def training_pod_specs_ref(job: dict) -> list[dict]:
    """Like training_pod_specs, but the pod specs inside ``job`` itself (for mutation)."""
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    return [
        rj["template"]["spec"]["template"]["spec"]
        for p in job["spec"]["runtimePatches"]
        for rj in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    ]


def admission_problems(objects: list[dict], jobs: dict[str, dict]) -> list[str]:
    """The policy admits ganforge's jobs, denies every violation, covers both kinds, and is bound here."""
    policies = [o for o in objects if o.get("kind") == "ValidatingAdmissionPolicy"]
    policy = next(
        (
            p
            for p in policies
            if any(
                "pytorchjobs" in r.get("resources", [])
                for r in p["spec"].get("matchConstraints", {}).get("resourceRules", [])
            )
        ),
        None,
    )
    if policy is None:
        return [
            "no ValidatingAdmissionPolicy matches pytorchjobs: the runner could create jobs whose pods read any Secret"
        ]
    where = object_name(policy)
    problems = []
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    for group, resource in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")):
        if not any(
            group in r["apiGroups"] and resource in r["resources"] and {"CREATE", "UPDATE"} <= set(r["operations"])
            for r in rules
        ):
            problems.append(f"{where}: does not match CREATE and UPDATE of {resource}.{group}")
    if policy["spec"].get("failurePolicy", "Fail") != "Fail":
        problems.append(f"{where}: failurePolicy must be Fail (an evaluation error must deny)")
    if "metadata" in policy and policy["metadata"].get("namespace"):
        problems.append(f"{where}: is cluster-scoped and must have no namespace")
    bindings = [
        o
        for o in objects
        if o.get("kind") == "ValidatingAdmissionPolicyBinding"
        and o["spec"].get("policyName") == policy["metadata"]["name"]
    ]
    if not any(
        "Deny" in b["spec"].get("validationActions", [])
        and (b["spec"].get("matchResources", {}).get("namespaceSelector", {}).get("matchLabels") or {}).get(
            "kubernetes.io/metadata.name"
        )
        == NAMESPACE
        for b in bindings
    ):
        problems.append(f"{where}: no binding with validationActions Deny for namespace {NAMESPACE}")
    for engine, job in jobs.items():
        for message in admission_denials(policy, job):
            problems.append(f"{where}: denies ganforge's own {engine}: {message}")
    for engine, what, broken in _violations(jobs):
        if not admission_denials(policy, broken):
            problems.append(f"{where}: admits a {engine} with {what}")
    return problems


# ---------------------------------------------------------------------------------------------
# Network: a NetworkPolicy evaluator (same-cluster pods and IP addresses, TCP/UDP ports).


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
    obj = _find(objects, kind, name)
    return dict(obj["spec"]["template"]["metadata"]["labels"]) if obj else {"missing": f"{kind}/{name}"}


def _api_server_address(objects: list[dict]) -> str:
    """The first address of the ipBlock the overlay names for the API server (kube-apiserver-egress)."""
    policy = _find(objects, "NetworkPolicy", "kube-apiserver-egress")
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


@dataclass(frozen=True)
class Runtime:
    """What ganforge creates at run time, for the checks that compare it with the render."""

    jobs: dict
    executors: dict

    @staticmethod
    def build() -> Runtime:
        return Runtime(training_job_manifests(), compiled_task_settings())


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
