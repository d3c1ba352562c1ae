"""The KServe InferenceService of k8s/components/serving: rendered with the real kubectl kustomize, checked
against the vendored CRD schema (tests/schemas/inferenceservice_v1beta1.yaml) with Kubernetes core types,
the project's hardening rules and the serving rules of scripts/k8s_serving.py; each rule seen failing."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail_in_ci
from ganforge.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import k8s_check  # noqa: E402
import k8s_serving  # noqa: E402

TARGET = "overlays/gpu-cluster-serving"


@pytest.fixture(scope="module")
def rendered() -> k8s_check.Rendered:
    if not (shutil.which("kubectl") or shutil.which("kustomize")):
        skip_or_fail_in_ci("needs kubectl (or kustomize) on PATH to render k8s/")
    (found,) = [r for r in k8s_check.render_all() if r.target == TARGET]
    return found


@pytest.fixture(scope="module")
def runtime() -> k8s_check.Runtime:
    return k8s_check.Runtime.build()


def isvc(objects: list[dict]) -> dict:
    (found,) = [o for o in objects if o["kind"] == "InferenceService"]
    return found


def container(objects: list[dict]) -> dict:
    return isvc(objects)["spec"]["predictor"]["containers"][0]


def test_the_overlay_serves_the_champion_with_the_project_image_and_the_mlflow_secret(rendered, runtime):
    assert k8s_check.rendered_problems(rendered, runtime) == []
    service = isvc(rendered.objects)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    c = container(rendered.objects)
    assert c["image"].startswith("registry.example.com/ganforge/ganforge-cpu:0.1.0@sha256:")
    # The command is the CLI's own serve command, parsed by ganforge's parser.
    args = build_parser().parse_args(c["command"][1:])
    assert (args.command, args.model, args.host, args.port) == ("serve", "models:/dcgan@champion", "0.0.0.0", 8080)
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"ganforge-mlflow"}
    predictor = service["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True and predictor["automountServiceAccountToken"] is False
    assert set(c["resources"]["limits"]) >= {"cpu", "memory"}
    # The other overlays stay without it.
    others = [r for r in k8s_check.render_all() if r.target != TARGET]
    assert others and not [o for r in others for o in r.objects if o["kind"] == "InferenceService"]


def _set(path: list, value):
    def edit(objects):
        node = isvc(objects)
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


_DELETE = object()
PREDICTOR = ["spec", "predictor"]
CONTAINER = [*PREDICTOR, "containers", 0]


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (_set([*PREDICTOR, "minReplica"], 1), "Additional properties are not allowed ('minReplica'"),
        (_set([*PREDICTOR, "minReplicas"], "one"), "'one' is not of type 'integer'"),
        (_set([*PREDICTOR, "scaleMetric"], "gpu"), "'gpu' is not one of"),
        (_set([*PREDICTOR, "logger"], {"mode": "all"}), "schema serving.kserve.io/v1beta1: spec.predictor.logger"),
        (_set(["spec", "transformer"], {"containers": []}), "spec.transformer"),
        (_set([*CONTAINER, "imagePullPolice"], "Always"), "schema io.k8s.api.core.v1.Container"),
        (_set(["apiVersion"], "serving.kserve.io/v1alpha1"), "is not serving.kserve.io/v1beta1"),
        (_set([*CONTAINER, "command"], ["python3", "-m", "http.server", "8080"]), "not `ganforge serve`"),
        (_set([*CONTAINER, "command", 3], "s3://bucket/model"), "is not a registry URI"),
        (_set([*CONTAINER, "command", 7], "9000"), "must be its one containerPort"),
        (_set([*CONTAINER, "readinessProbe", "httpGet", "path"], "/"), "readinessProbe must GET /ping"),
        (_set([*CONTAINER, "image"], "python:3.11-slim@sha256:" + "1" * 64), "not the project's ganforge-cpu"),
        (_set([*CONTAINER, "env", 2, "valueFrom", "secretKeyRef", "name"], "mlflow-auth"), "MLFLOW_TRACKING_PASSWORD"),
        (
            lambda o: container(o)["env"].append(
                {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "ganforge-s3", "key": "x"}}}
            ),
            "reads secrets beyond the MLflow user",
        ),
        (_set([*CONTAINER, "volumeMounts"], []), "/tmp (the verified model copy) must be an emptyDir"),
        (_set([*PREDICTOR, "labels", "ganforge.io/mlflow-client"], "false"), "lacks ganforge.io/mlflow-client"),
        (
            lambda o: o.remove(
                next(x for x in o if x["kind"] == "NetworkPolicy" and x["metadata"]["name"] == "serving-ingress")
            ),
            "no NetworkPolicy admits ingress",
        ),
        # The generic checks of k8s_check cover the predictor as a pod spec.
        (_set([*CONTAINER, "securityContext", "readOnlyRootFilesystem"], False), "readOnlyRootFilesystem must be true"),
        (_set([*CONTAINER, "securityContext", "runAsNonRoot"], False), "runAsNonRoot must be true"),
        (_set([*CONTAINER, "resources", "limits"], _DELETE), "resources.limits lacks cpu, memory"),
        (_set([*CONTAINER, "livenessProbe"], _DELETE), "server container needs a livenessProbe"),
        (_set([*PREDICTOR, "automountServiceAccountToken"], True), "automountServiceAccountToken must be false"),
        (_set([*CONTAINER, "image"], "registry.example.com/ganforge/ganforge-cpu:0.1.0"), "pinned by tag only"),
        (_set([*CONTAINER, "env", 1, "valueFrom", "secretKeyRef", "key"], "NOPE"), "reads key NOPE of Secret"),
        (_set([*CONTAINER, "args"], ["--port", "$(MLFLOW_TRACKING_PASSWORD)"]), "from a Secret is on the command line"),
    ],
)
def test_each_serving_rule_fails_on_a_broken_manifest(rendered, runtime, breakage, expected):
    objects = copy.deepcopy(rendered.objects)
    breakage(objects)
    problems = "\n".join(k8s_check.rendered_problems(k8s_check.Rendered(TARGET, objects), runtime))
    assert expected in problems, problems


def test_the_schema_check_passes_only_the_kinds_it_has_a_schema_for():
    assert k8s_check.CRD_KINDS == {"InferenceService"}
    assert set(k8s_serving.CRD_SCHEMAS) == {"InferenceService"} and all(
        p.is_file() for p in k8s_serving.CRD_SCHEMAS.values()
    )
