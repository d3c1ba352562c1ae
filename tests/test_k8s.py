"""The k8s/ manifests: rendered with the real kubectl kustomize, validated against real schemas."""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail_in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import k8s_check  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _renderer_on_path() -> None:
    if not (shutil.which("kubectl") or shutil.which("kustomize")):
        skip_or_fail_in_ci("needs kubectl (or kustomize) on PATH to render k8s/")


RUNNER_ROLE_RULES = {
    ("kubeflow.org", "pytorchjobs", None): {"create", "get", "list", "watch", "delete"},
    ("trainer.kubeflow.org", "trainjobs", None): {"create", "get", "list", "watch", "delete"},
    ("", "pods", None): {"get", "list", "watch"},
    ("", "pods/log", None): {"get"},
}
KFP_TASK_ROLE_RULES = {
    ("argoproj.io", "workflowtaskresults", None): {"create", "patch"},
    ("", "configmaps", ("kfp-launcher",)): {"get"},
    ("", "secrets", ("ganforge-s3",)): {"get"},
}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {r.target: r.objects for r in k8s_check.render_all()}


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def rule_table(role: dict) -> dict[tuple, set[str]]:
    table = {}
    for rule in role["rules"]:
        names = tuple(rule["resourceNames"]) if "resourceNames" in rule else None
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource, names)
                assert key not in table, f"{role['metadata']['name']}: {key} granted twice"
                table[key] = set(rule["verbs"])
    return table


def test_make_k8s_check_passes_on_the_shipped_manifests():
    import k8s_hardening

    try:
        k8s_hardening.checkov_binary()
    except k8s_hardening.CheckovMissing as exc:
        skip_or_fail_in_ci(str(exc))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "k8s_check.py")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "k8s-check: OK (4 targets" in proc.stdout


CLUSTER_SCOPED = {"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_base_and_both_overlays_render(renders):
    assert set(renders) == {"base", "overlays/local-kind", "overlays/gpu-cluster", "overlays/gpu-cluster-serving"}
    for objects in renders.values():
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED} == {"ganforge"}
        assert not [o for o in objects if o["kind"] in CLUSTER_SCOPED and "namespace" in o["metadata"]]


def test_rbac_is_exactly_least_privilege(renders):
    for objects in renders.values():
        assert rule_table(find(objects, "Role", "ganforge-pipeline-runner")) == RUNNER_ROLE_RULES
        assert rule_table(find(objects, "Role", "ganforge-kfp-task")) == KFP_TASK_ROLE_RULES
        assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
        find(objects, "ServiceAccount", "ganforge-pipeline-runner")
        for binding in (o for o in objects if o["kind"] == "RoleBinding"):
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": "ganforge-pipeline-runner", "namespace": "ganforge"}
            ]


def test_every_container_has_resources_and_a_hardened_security_context(renders):
    containers = 0
    for objects in renders.values():
        for obj in objects:
            spec = k8s_check.pod_spec(obj)
            for container in k8s_check.containers_of(spec) if spec else ():
                containers += 1
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert spec["securityContext"]["runAsNonRoot"] is True
                assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
                assert set(container["resources"]["requests"]) == {"cpu", "memory"}
                assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    # minio, postgres, mlflow and the bucket, auth and roles init Jobs, per render; the serving predictor
    assert containers == 4 * 6 + 1


def test_servers_have_probes_and_images_are_pinned(renders):
    for objects in renders.values():
        for name in ("minio", "postgres", "mlflow"):
            kind = "Deployment" if name == "mlflow" else "StatefulSet"
            container = find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
            assert "readinessProbe" in container and "livenessProbe" in container
        for obj in objects:
            spec = k8s_check.pod_spec(obj)
            for container in k8s_check.containers_of(spec) if spec else ():
                image = container["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_secrets_are_placeholders_and_launcher_config_points_at_minio(renders):
    objects = renders["base"]
    secrets = [o for o in objects if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "minio-root",
        "ganforge-s3",
        "postgres",
        "mlflow-db",
        "mlflow-s3",
        "mlflow-auth",
        "ganforge-mlflow",
    }
    for secret in secrets:
        assert set(k8s_check.secret_values(secret).values()) == {"REPLACE_ME"}
    launcher = find(objects, "ConfigMap", "kfp-launcher")
    assert launcher["data"]["defaultPipelineRoot"] == "s3://ganforge-artifacts/pipelines"
    assert k8s_check.kfp_launcher_problems(objects) == []


def test_overlays_size_the_cluster_differently(renders):
    def storage(objects, name):
        sts = find(objects, "StatefulSet", name)
        return sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]

    kind, gpu = renders["overlays/local-kind"], renders["overlays/gpu-cluster"]
    assert (storage(kind, "minio"), storage(gpu, "minio")) == ("5Gi", "500Gi")
    assert "--workers=1" in find(kind, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = find(gpu, "ConfigMap", "ganforge-cluster")["data"]
    assert settings["GANFORGE_GPU_NODE_SELECTOR"] == "nvidia.com/gpu.present=true"
    for name, kind_name in (("minio", "StatefulSet"), ("postgres", "StatefulSet"), ("mlflow", "Deployment")):
        terms = find(gpu, kind_name, name)["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0] == {
            "key": "nvidia.com/gpu.present",
            "operator": "NotIn",
            "values": ["true"],
        }
        assert "affinity" not in find(kind, kind_name, name)["spec"]["template"]["spec"]


def test_check_reports_each_kind_of_problem(renders):
    objects = copy.deepcopy(renders["base"])
    secret = find(objects, "Secret", "ganforge-s3")
    secret["data"]["AWS_SECRET_ACCESS_KEY"] = base64.b64encode(b"hunter2").decode()
    assert "AWS_SECRET_ACCESS_KEY" in " ".join(k8s_check.secret_problems(secret))

    mlflow = find(objects, "Deployment", "mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    del container["resources"]["limits"]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["readinessProbe"]
    container["image"] = "ganforge-mlflow:latest"
    problems = " ".join(k8s_check.workload_problems(mlflow))
    for expected in ("resources.limits", "allowPrivilegeEscalation", "readinessProbe", ":latest"):
        assert expected in problems

    container["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "NO_SUCH_KEY"
    assert "NO_SUCH_KEY" in " ".join(k8s_check.reference_problems(objects))

    launcher = find(objects, "ConfigMap", "kfp-launcher")
    launcher["data"]["providers"] = launcher["data"]["providers"].replace(
        "secretKeyKey: AWS_SECRET_ACCESS_KEY", "secretKeyKey: WRONG"
    )
    assert "secretKeyKey=WRONG" in " ".join(k8s_check.kfp_launcher_problems(objects))

    container["bogusField"] = 1
    assert "bogusField" in " ".join(k8s_check.schema_problems(mlflow))


def test_real_env_files_are_never_rendered(tmp_path):
    k8s_copy = tmp_path / "k8s"
    shutil.copytree(REPO_ROOT / "k8s" / "base", k8s_copy / "base")
    real = k8s_copy / "base" / "secrets" / "ganforge-s3.env"
    real.write_text("AWS_ACCESS_KEY_ID=AKIAREALKEY\nAWS_SECRET_ACCESS_KEY=real-secret\n")
    (rendered,) = k8s_check.render_all(k8s_copy)
    secret = find(rendered.objects, "Secret", "ganforge-s3")
    assert set(k8s_check.secret_values(secret).values()) == {"REPLACE_ME"}
    assert real.read_text().startswith("AWS_ACCESS_KEY_ID=AKIAREALKEY")


def test_a_missing_kustomize_target_file_is_a_clear_error(tmp_path):
    k8s_copy = tmp_path / "k8s"
    shutil.copytree(REPO_ROOT / "k8s" / "base", k8s_copy / "base")
    (k8s_copy / "base" / "mlflow.yaml").unlink()
    with pytest.raises(k8s_check.CheckError, match="mlflow.yaml"):
        k8s_check.render_all(k8s_copy)


# --- admission, pod security, network, credentials, MLflow auth --------------------


@pytest.fixture(scope="module")
def runtime() -> k8s_check.Runtime:
    """The training job manifests ganforge.platform.cluster_jobs builds and the compiled pipeline's task settings."""
    return k8s_check.Runtime.build()


def test_every_security_check_passes_on_every_render(renders, runtime):
    for target, objects in renders.items():
        assert k8s_check.rendered_problems(k8s_check.Rendered(target, objects), runtime) == []


def _policy(objects: list[dict]) -> dict:
    return find(objects, "ValidatingAdmissionPolicy", "ganforge-training-jobs")


def test_admission_policy_admits_ganforge_jobs_and_denies_each_violation(renders, runtime):
    objects = renders["base"]
    policy = _policy(objects)
    for engine, job in runtime.jobs.items():
        assert k8s_check.admission_denials(policy, job) == [], engine
    violations = k8s_check._violations(runtime.jobs)
    assert len(violations) == 2 * 11 + 4
    for engine, what, broken in violations:
        assert k8s_check.admission_denials(policy, broken), f"{engine} with {what} admitted"
    assert k8s_check.admission_problems(objects, runtime.jobs) == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        # The policy allows a Secret the runner may not read -> a job reading it is admitted.
        (
            lambda p, b: p["spec"]["variables"][0].update(
                expression="['ganforge-s3', 'ganforge-mlflow', 'minio-root']"
            ),
            "admits a pytorchjob with env secretKeyRef minio-root",
        ),
        # The volume rule is dropped -> hostPath is admitted.
        (lambda p, b: p["spec"]["validations"].pop(1), "admits a trainjob with hostPath volume"),
        # The ServiceAccount rule is dropped -> a job running as the runner itself is admitted.
        (
            lambda p, b: p["spec"]["validations"].pop(2),
            "admits a pytorchjob with serviceAccountName ganforge-pipeline-runner",
        ),
        (lambda p, b: p["spec"]["validations"].pop(3), "admits a pytorchjob with privileged container"),
        (lambda p, b: p["spec"]["validations"].pop(4), "admits a trainjob with another runtime"),
        # A typo in a field name makes the rule deny ganforge's own jobs.
        (
            lambda p, b: p["spec"]["validations"][2].update(
                expression=p["spec"]["validations"][2]["expression"].replace(
                    "s.serviceAccountName ==", "s.serviceAcountName =="
                )
            ),
            "denies ganforge's own",
        ),
        (lambda p, b: b["spec"].update(validationActions=["Warn"]), "no binding with validationActions Deny"),
        (
            lambda p, b: b["spec"]["matchResources"]["namespaceSelector"]["matchLabels"].update(
                {"kubernetes.io/metadata.name": "default"}
            ),
            "no binding with validationActions Deny for namespace ganforge",
        ),
        (
            lambda p, b: p["spec"]["matchConstraints"]["resourceRules"].pop(1),
            "does not match CREATE and UPDATE of trainjobs",
        ),
        (lambda p, b: p["spec"].update(failurePolicy="Ignore"), "failurePolicy must be Fail"),
    ],
)
def test_admission_check_fails_on_a_broken_policy(renders, runtime, breakage, expected):
    objects = copy.deepcopy(renders["base"])
    breakage(_policy(objects), find(objects, "ValidatingAdmissionPolicyBinding", "ganforge-training-jobs"))
    assert expected in " | ".join(k8s_check.admission_problems(objects, runtime.jobs))


def test_admission_check_fails_without_a_policy(renders, runtime):
    objects = [o for o in renders["base"] if o["kind"] != "ValidatingAdmissionPolicy"]
    assert "no ValidatingAdmissionPolicy matches pytorchjobs" in " ".join(
        k8s_check.admission_problems(objects, runtime.jobs)
    )


def test_training_pods_and_workloads_meet_restricted_without_a_token(renders, runtime):
    objects = renders["base"]
    assert k8s_check.pod_security_problems(objects, runtime.jobs) == []
    pytorch = runtime.jobs["pytorchjob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pytorch["automountServiceAccountToken"] is False and pytorch["serviceAccountName"] == "ganforge-training"
    assert {"name": "tmp", "mountPath": "/tmp"} in pytorch["containers"][0]["volumeMounts"]
    assert find(objects, "ServiceAccount", "ganforge-training")["automountServiceAccountToken"] is False
    assert not [
        b
        for b in objects
        if b["kind"] == "RoleBinding" and any(s["name"] == "ganforge-training" for s in b["subjects"])
    ]
    labels = find(objects, "Namespace", "ganforge")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (
            lambda o, j: k8s_check.training_pod_specs_ref(j["pytorchjob"])[0]["containers"][0][
                "securityContext"
            ].update(readOnlyRootFilesystem=False),
            "pytorchjob pods: container pytorch: readOnlyRootFilesystem",
        ),
        (
            lambda o, j: k8s_check.training_pod_specs_ref(j["pytorchjob"])[0].pop("automountServiceAccountToken"),
            "pytorchjob pods: automountServiceAccountToken must be false",
        ),
        (
            lambda o, j: k8s_check.training_pod_specs_ref(j["trainjob"])[0]["securityContext"].pop("seccompProfile"),
            "trainjob pods: seccompProfile",
        ),
        (
            lambda o, j: find(o, "ServiceAccount", "ganforge-training").pop("automountServiceAccountToken"),
            "ServiceAccount ganforge-training mounts its token",
        ),
        (
            lambda o, j: find(o, "Job", "mlflow-auth-init")["spec"]["template"]["spec"].pop(
                "automountServiceAccountToken"
            ),
            "Job/ganforge/mlflow-auth-init: automountServiceAccountToken must be false",
        ),
        (
            lambda o, j: find(o, "Deployment", "mlflow")["spec"]["template"]["spec"]["volumes"].append(
                {"name": "host", "hostPath": {"path": "/var"}}
            ),
            "volume host: type hostPath is not allowed",
        ),
        (
            lambda o, j: find(o, "Namespace", "ganforge")["metadata"]["labels"].pop(
                "pod-security.kubernetes.io/enforce"
            ),
            "pod-security.kubernetes.io/enforce must be baseline or restricted",
        ),
    ],
)
def test_pod_security_check_fails_on_a_violation(renders, runtime, breakage, expected):
    objects, jobs = copy.deepcopy(renders["base"]), copy.deepcopy(runtime.jobs)
    breakage(objects, jobs)
    assert expected in " | ".join(k8s_check.pod_security_problems(objects, jobs))


def test_compiled_pipeline_tasks_run_non_root_with_required_mlflow_credentials(renders, runtime):
    executors = runtime.executors
    assert {"exec-train", "exec-register", "exec-end-run"} <= set(executors)
    for name, settings in executors.items():
        assert settings["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, name
        mlflow_refs = [
            r
            for r in settings["secretAsEnv"]
            if r.get("secretName") == "ganforge-mlflow"
            or (r.get("secretNameParameter") or {}).get("runtimeValue", {}).get("constant") == "ganforge-mlflow"
        ]
        assert len(mlflow_refs) == 1 and not mlflow_refs[0].get("optional"), name
    assert k8s_check.task_security_problems(executors) == []
    assert k8s_check.runtime_secret_problems(renders["base"], runtime.jobs, executors) == []
    # Without the Secret in k8s/ the check names it, for tasks and training pods.
    no_secret = [
        o for o in renders["base"] if not (o["kind"] == "Secret" and o["metadata"]["name"] == "ganforge-mlflow")
    ]
    problems = " | ".join(k8s_check.runtime_secret_problems(no_secret, runtime.jobs, executors))
    assert "pipeline task exec-register: reads Secret ganforge-mlflow, which k8s/ does not define" in problems
    assert "pytorchjob pods: read Secret ganforge-mlflow, which k8s/ does not define" in problems
    broken = copy.deepcopy(executors)
    del broken["exec-train"]["securityContext"]
    broken["exec-evaluate"]["podMetadata"]["labels"].pop("ganforge.io/storage-client")
    problems = " | ".join(k8s_check.task_security_problems(broken))
    assert "exec-train: securityContext" in problems and "exec-evaluate: label ganforge.io/storage-client" in problems
    optional = copy.deepcopy(executors)
    for ref in optional["exec-register"]["secretAsEnv"]:
        ref["optional"] = True
    assert "exec-register: Secret" in " ".join(
        k8s_check.runtime_secret_problems(renders["base"], runtime.jobs, optional)
    )


def _endpoints(objects, runtime):
    return k8s_check.network_endpoints(objects, runtime.jobs)


def test_network_default_deny_with_exactly_the_needed_exceptions(renders, runtime):
    for objects in renders.values():
        assert k8s_check.network_problems(objects, runtime.jobs) == []
    objects = renders["base"]
    e = _endpoints(objects, runtime)
    allowed = k8s_check.connection_allowed
    assert allowed(objects, e["mlflow"], e["postgres"], 5432)
    assert not allowed(objects, e["kfp-task"], e["postgres"], 5432)
    assert not allowed(objects, e["mlflow"], e["postgres"], 5433)
    assert allowed(objects, e["trainjob-pod"], e["trainjob-pod"], 29400)
    assert not allowed(objects, e["other-pod"], e["internet"], 443)
    assert allowed(objects, e["other-pod"], e["kube-dns"], 53, "UDP")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda o: o.remove(find(o, "NetworkPolicy", "default-deny")), "no default-deny NetworkPolicy"),
        (
            lambda o: o.remove(find(o, "NetworkPolicy", "default-deny")),
            "allow other-namespace-pod -> kfp-task:8080/TCP",
        ),
        # dns-egress alone already limits every pod's egress to DNS; without both, anything goes out.
        (
            lambda o: [o.remove(find(o, "NetworkPolicy", n)) for n in ("default-deny", "dns-egress")],
            "allow other-pod -> internet:443/TCP",
        ),
        (lambda o: o.remove(find(o, "NetworkPolicy", "dns-egress")), "block kfp-task -> kube-dns:53/UDP"),
        # Egress rules of the clients still keep them off Postgres: open both sides to see the check fail.
        (
            lambda o: find(o, "NetworkPolicy", "postgres-ingress")["spec"]["ingress"][0]["from"].append(
                {"namespaceSelector": {}}
            ),
            "allow other-namespace-pod -> postgres:5432/TCP",
        ),
        (
            lambda o: [
                find(o, "NetworkPolicy", "postgres-ingress")["spec"]["ingress"][0]["from"].append({"podSelector": {}}),
                find(o, "NetworkPolicy", "kfp-task-egress")["spec"]["egress"].append({"to": [{"podSelector": {}}]}),
            ],
            "allow kfp-task -> postgres:5432/TCP",
        ),
        (lambda o: o.remove(find(o, "NetworkPolicy", "kfp-task-egress")), "block kfp-task -> kfp-api:8887/TCP"),
        (
            lambda o: o.remove(find(o, "NetworkPolicy", "kube-apiserver-egress")),
            "block kfp-task -> kube-apiserver:443/TCP",
        ),
        (lambda o: o.remove(find(o, "NetworkPolicy", "mlflow-egress")), "block mlflow -> postgres:5432/TCP"),
        (
            lambda o: find(o, "NetworkPolicy", "training")["spec"]["egress"].append(
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
            ),
            "allow pytorchjob-pod -> internet:443/TCP",
        ),
        (
            lambda o: find(o, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]["from"].append(
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"ganforge.io/storage-client": "true"}}}
            ),
            "allow other-namespace-pod -> mlflow:5000/TCP",
        ),
        (
            lambda o: find(o, "NetworkPolicy", "training")["spec"].pop("ingress"),
            "block pytorchjob-pod -> pytorchjob-pod:23456",
        ),
    ],
)
def test_network_check_fails_on_a_broken_policy(renders, runtime, breakage, expected):
    objects = copy.deepcopy(renders["base"])
    breakage(objects)
    assert expected in " | ".join(k8s_check.network_problems(objects, runtime.jobs))


def test_no_credential_on_a_command_line(renders):
    objects = copy.deepcopy(renders["base"])
    for obj in objects:
        assert k8s_check.command_line_problems(obj, objects) == []
    mlflow = find(objects, "Deployment", "mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert not any("PASSWORD" in a for a in container["command"] + container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "PGPASSWORD"}
    assert "@" in env["MLFLOW_BACKEND_STORE_URI"]["value"] and ":$(" not in env["MLFLOW_BACKEND_STORE_URI"]["value"]
    container["args"].append("--backend-store-uri=postgresql://u:$(PGPASSWORD)@postgres/mlflow")
    assert "$(PGPASSWORD) from a Secret is on the command line" in " ".join(
        k8s_check.command_line_problems(mlflow, objects)
    )
    container["args"].pop()
    env["MLFLOW_BACKEND_STORE_URI"]["value"] = "postgresql+psycopg2://$(POSTGRES_USER):$(PGPASSWORD)@postgres/db"
    assert "embeds the credential PGPASSWORD" in " ".join(k8s_check.command_line_problems(mlflow, objects))
    postgres = find(objects, "StatefulSet", "postgres")  # envFrom: every key of the Secret counts
    probe = postgres["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    probe[:] = ["/bin/sh", "-c", 'PGPASSWORD="$POSTGRES_PASSWORD" psql -c "select 1"']
    assert "$POSTGRES_PASSWORD from a Secret is expanded" in " ".join(
        k8s_check.command_line_problems(postgres, objects)
    )


def test_mlflow_runs_basic_auth_from_secrets_with_its_own_s3_keys(renders):
    objects = renders["base"]
    assert k8s_check.mlflow_auth_problems(objects, "ganforge-s3", "ganforge-mlflow") == []
    container = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    # What MLflow itself reads from the shipped ini.
    ini = find(objects, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    assert k8s_check.auth_ini_problems(ini) == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda o: _mlflow_container(o)["args"].remove("--app-name=basic-auth"), "without --app-name=basic-auth"),
        (
            lambda o: _mlflow_env(o, "AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"].update(name="ganforge-s3"),
            "MLflow uses the pipeline tasks' S3 Secret ganforge-s3",
        ),
        (
            lambda o: (
                _mlflow_env(o, "MLFLOW_AUTH_ADMIN_PASSWORD").update(value="hunter2", valueFrom=None)
                or _mlflow_env(o, "MLFLOW_AUTH_ADMIN_PASSWORD").pop("valueFrom")
            ),
            "MLFLOW_AUTH_ADMIN_PASSWORD must come from a Secret",
        ),
        (
            lambda o: _mlflow_container(o)["env"].remove(_mlflow_env(o, "MLFLOW_AUTH_CONFIG_PATH")),
            "MLFLOW_AUTH_CONFIG_PATH is not set",
        ),
        (
            lambda o: _auth_ini(
                o, lambda t: t.replace("default_permission = NO_PERMISSIONS", "default_permission = READ")
            ),
            "default_permission=READ: every user would reach every experiment and model",
        ),
        (
            lambda o: _auth_ini(
                o, lambda t: t.replace("postgresql+psycopg2://postgres:5432", "sqlite:///basic_auth.db")
            ),
            "users must persist in Postgres",
        ),
        (lambda o: _auth_ini(o, lambda t: t.replace("database_uri", "database")), "MLflow cannot read it"),
        (lambda o: _auth_ini(o, lambda t: t + "admin_password = x\n"), "holds the admin account"),
        (
            lambda o: o.remove(find(o, "Secret", "ganforge-mlflow")),
            "Secret ganforge-mlflow (the pipeline's MLflow user)",
        ),
    ],
)
def test_mlflow_auth_check_fails_on_a_violation(renders, breakage, expected):
    objects = copy.deepcopy(renders["base"])
    breakage(objects)
    assert expected in " | ".join(k8s_check.mlflow_auth_problems(objects, "ganforge-s3", "ganforge-mlflow"))


def _mlflow_container(objects):
    return find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def _mlflow_env(objects, name):
    return next(e for e in _mlflow_container(objects)["env"] if e["name"] == name)


def _auth_ini(objects, edit):
    data = find(objects, "ConfigMap", "mlflow-auth")["data"]
    data["basic_auth.ini"] = edit(data["basic_auth.ini"])


def test_only_the_mlflow_server_keys_write_the_mlflow_bucket(renders):
    objects = renders["base"]
    assert k8s_check.bucket_access(objects) == {
        "ganforge-s3": {"ganforge-artifacts": True, "mlflow": False},
        "mlflow-s3": {"ganforge-artifacts": False, "mlflow": True},
    }
    assert k8s_check.bucket_problems(objects, "ganforge-s3") == []
    broken = copy.deepcopy(objects)
    data = find(broken, "ConfigMap", "minio-bucket-init")["data"]
    data["ganforge-artifacts-policy.json"] = data["ganforge-artifacts-policy.json"].replace(
        '"arn:aws:s3:::ganforge-artifacts/*"', '"arn:aws:s3:::ganforge-artifacts/*", "arn:aws:s3:::mlflow/*"'
    )
    assert "can write the mlflow bucket: a task could replace" in " ".join(
        k8s_check.bucket_problems(broken, "ganforge-s3")
    )
    broken = copy.deepcopy(objects)
    env = find(broken, "Job", "minio-bucket-init")["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "MLFLOW_ACCESS_KEY_ID")["valueFrom"]["secretKeyRef"]["name"] = "ganforge-s3"
    assert "can write the mlflow bucket" in " ".join(k8s_check.bucket_problems(broken, "ganforge-s3"))


# --- MLflow basic-auth for real: the shipped ini and init script against a real server ----------


@pytest.mark.slow  # a real `mlflow server --app-name basic-auth` process (~15-30 s to start on 2 cores)
def test_mlflow_basic_auth_with_the_shipped_config_and_init_job(renders, tmp_path):
    import os

    from servers import http_status, mlflow_server

    objects = renders["base"]
    ini = find(objects, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    # The shipped config, with the auth store in sqlite here instead of the cluster's Postgres.
    assert "database_uri = postgresql+psycopg2://postgres:5432" in ini
    (tmp_path / "basic_auth.ini").write_text(
        ini.replace("postgresql+psycopg2://postgres:5432", f"sqlite:///{tmp_path / 'auth.db'}")
    )
    admin, user = ("admin-x", "admin-password-01"), ("ganforge-pipeline", "pipeline-password-1")
    container = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    flags = [a for a in container["args"] if a.startswith("--app-name") or a == "--serve-artifacts"]
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
    }
    with mlflow_server(tmp_path / "server", env=env, args=flags) as uri:
        search = f"{uri}/api/2.0/mlflow/experiments/search"
        assert http_status(search, "POST", None, {"max_results": 1}) == 401  # anonymous
        assert http_status(search, "POST", (user[0], user[1]), {"max_results": 1}) == 401  # user not created yet
        assert http_status(search, "POST", admin, {"max_results": 1}) == 200

        # The mlflow-auth-init Job's script, exactly as shipped, creates the pipeline user...
        script = tmp_path / "init_user.py"
        script.write_text(find(objects, "ConfigMap", "mlflow-auth-init")["data"]["init_user.py"])
        job_env = {
            "PATH": os.environ["PATH"],
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_WAIT_S": "30",
            "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
            "MLFLOW_TRACKING_USERNAME": user[0],
            "MLFLOW_TRACKING_PASSWORD": user[1],
            "MLFLOW_MODELS": "dcgan,wgan-gp",
        }
        run = subprocess.run([sys.executable, str(script)], env=job_env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "created; it logs in" in run.stdout, run.stdout + run.stderr
        assert http_status(search, "POST", user, {"max_results": 1}) == 200
        assert http_status(f"{uri}/api/2.0/mlflow/experiments/create", "POST", user, {"name": "dcgan"}) == 200
        assert http_status(search, "POST", (user[0], "wrong"), {"max_results": 1}) == 401
        # ...is not an admin (cannot create users)...
        assert (
            http_status(f"{uri}/api/2.0/mlflow/users/create", "POST", user, {"username": "x", "password": "y"}) == 403
        )
        # ...sees nothing it was not granted (default_permission NO_PERMISSIONS)...
        assert http_status(f"{uri}/api/2.0/mlflow/experiments/create", "POST", admin, {"name": "admin-only"}) == 200
        by_name = f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=admin-only"
        assert http_status(by_name, "GET", admin, None) == 200 and http_status(by_name, "GET", user, None) == 403
        # ...and edits, but cannot delete, the registered models the Job made (the admin owns them).
        for model in ("dcgan", "wgan-gp"):
            assert http_status(f"{uri}/api/2.0/mlflow/registered-models/get?name={model}", "GET", user, None) == 200
            tag = {"name": model, "key": "k", "value": "v"}
            assert http_status(f"{uri}/api/2.0/mlflow/registered-models/set-tag", "POST", user, tag) == 200
            assert http_status(f"{uri}/api/2.0/mlflow/registered-models/delete", "DELETE", user, {"name": model}) == 403
        # ...and a re-run after the Secret changed makes the Secret's password the valid one.
        run = subprocess.run(
            [sys.executable, str(script)],
            env={**job_env, "MLFLOW_TRACKING_PASSWORD": "pipeline-password-2"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0 and "password reset" in run.stdout, run.stdout + run.stderr
        assert http_status(search, "POST", user, {"max_results": 1}) == 401
        assert http_status(search, "POST", (user[0], "pipeline-password-2"), {"max_results": 1}) == 200
        # The script refuses to hand out the admin account as the pipeline's user.
        run = subprocess.run(
            [sys.executable, str(script)],
            env={**job_env, "MLFLOW_TRACKING_USERNAME": admin[0]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode != 0 and "not the MLflow admin" in run.stderr
