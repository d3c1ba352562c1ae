"""The k8s/ manifests: rendered with the real kubectl kustomize, validated against real schemas."""
from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import k8s_check  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("kubectl") or shutil.which("kustomize")),
    reason="needs kubectl (or kustomize) on PATH to render k8s/",
)

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
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "k8s_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "k8s-check: OK (3 targets" in proc.stdout


def test_base_and_both_overlays_render(renders):
    assert set(renders) == {"base", "overlays/local-kind", "overlays/gpu-cluster"}
    for objects in renders.values():
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"ganforge"}


def test_rbac_is_exactly_least_privilege(renders):
    for objects in renders.values():
        assert rule_table(find(objects, "Role", "ganforge-pipeline-runner")) == RUNNER_ROLE_RULES
        assert rule_table(find(objects, "Role", "ganforge-kfp-task")) == KFP_TASK_ROLE_RULES
        assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
        find(objects, "ServiceAccount", "ganforge-pipeline-runner")
        for binding in (o for o in objects if o["kind"] == "RoleBinding"):
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ganforge-pipeline-runner",
                                            "namespace": "ganforge"}]


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
    assert containers == 3 * 4  # minio, postgres, mlflow, bucket-init in each render


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


def test_network_policies_admit_only_the_namespaces_clients(renders):
    objects = renders["base"]
    minio_policy = find(objects, "NetworkPolicy", "minio-ingress")
    postgres_policy = find(objects, "NetworkPolicy", "postgres-ingress")
    minio_labels = find(objects, "StatefulSet", "minio")["spec"]["template"]["metadata"]["labels"]
    postgres_labels = find(objects, "StatefulSet", "postgres")["spec"]["template"]["metadata"]["labels"]
    assert minio_policy["spec"]["podSelector"]["matchLabels"].items() <= minio_labels.items()
    assert postgres_policy["spec"]["podSelector"]["matchLabels"].items() <= postgres_labels.items()

    def selects(selector: dict, labels: dict) -> bool:
        expressions = selector.get("matchExpressions", [])
        assert all(e["operator"] == "Exists" for e in expressions), expressions
        return (selector.get("matchLabels", {}).items() <= labels.items()
                and all(e["key"] in labels for e in expressions))

    def admitted(policy: dict, labels: dict) -> bool:
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        assert all(set(peer) == {"podSelector"} for peer in peers), "only same-namespace pod peers allowed"
        return any(selects(peer["podSelector"], labels) for peer in peers)

    mlflow_labels = find(objects, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    init_labels = find(objects, "Job", "minio-bucket-init")["spec"]["template"]["metadata"]["labels"]
    assert admitted(minio_policy, mlflow_labels) and admitted(minio_policy, init_labels)
    assert not admitted(minio_policy, {"app": "something-else"})
    # Distributed training pods, labelled by their controllers (PyTorchJob, TrainJob's JobSet).
    assert admitted(minio_policy, {"training.kubeflow.org/job-name": "dcgan-1a2b"})
    assert admitted(minio_policy, {"jobset.sigs.k8s.io/jobset-name": "dcgan-1a2b"})
    assert not admitted(postgres_policy, {"training.kubeflow.org/job-name": "dcgan-1a2b"})
    assert admitted(postgres_policy, mlflow_labels)
    assert not admitted(postgres_policy, init_labels)
    assert [p["port"] for r in postgres_policy["spec"]["ingress"] for p in r["ports"]] == [5432]


def test_secrets_are_placeholders_and_launcher_config_points_at_minio(renders):
    objects = renders["base"]
    secrets = [o for o in objects if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {"minio-root", "ganforge-s3", "postgres"}
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
    assert settings["gpuNodeSelectorKey"] == "nvidia.com/gpu.present"
    for name, kind_name in (("minio", "StatefulSet"), ("postgres", "StatefulSet"), ("mlflow", "Deployment")):
        terms = find(gpu, kind_name, name)["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0] == {"key": "nvidia.com/gpu.present", "operator": "NotIn",
                                                   "values": ["true"]}
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
    launcher["data"]["providers"] = launcher["data"]["providers"].replace("secretKeyKey: AWS_SECRET_ACCESS_KEY",
                                                                          "secretKeyKey: WRONG")
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
