"""GPU placement from one place: GANFORGE_GPU_NODE_SELECTOR / GANFORGE_GPU_TOLERATIONS (the keys of the
gpu-cluster overlay's ganforge-cluster ConfigMap) reach the compiled training task's Kubernetes settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ganforge.platform import gpu_nodes

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import k8s_check  # noqa: E402


def compile_with(env: dict[str, str], tmp_path: Path, monkeypatch, profile: str = "full") -> tuple[dict, dict]:
    """Compile dcgan with ``env`` set; returns (kubernetes executors of the platform spec, IR executors)."""
    from pipelines.compile import compile_pipeline

    for name in (gpu_nodes.NODE_SELECTOR_ENV, gpu_nodes.TOLERATIONS_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = compile_pipeline("dcgan", tmp_path / "dcgan.yaml", profile)
    ir, platform = list(yaml.safe_load_all(out.read_text()))
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], ir["deploymentSpec"]["executors"]


def container_env(ir_executors: dict, executor: str) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in ir_executors[executor]["container"].get("env", [])}


def test_gpu_cluster_configmap_values_reach_the_compiled_training_task(tmp_path, monkeypatch):
    rendered = {r.target: r.objects for r in k8s_check.render_all()}["overlays/gpu-cluster"]
    (settings,) = [
        o["data"] for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ganforge-cluster"
    ]
    gpu_keys = {k: v for k, v in settings.items() if k.startswith("GANFORGE_GPU_")}
    assert set(gpu_keys) == {gpu_nodes.NODE_SELECTOR_ENV, gpu_nodes.TOLERATIONS_ENV}

    k8s, ir = compile_with(gpu_keys, tmp_path, monkeypatch)
    for executor in ("exec-train", "exec-evaluate"):
        assert k8s[executor]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
        assert k8s[executor]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in k8s["exec-register"] and "tolerations" not in k8s["exec-register"]


def test_custom_selector_and_tolerations_reach_the_task_and_its_cluster_jobs(tmp_path, monkeypatch):
    env = {
        gpu_nodes.NODE_SELECTOR_ENV: "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3, pool=gpu",
        gpu_nodes.TOLERATIONS_ENV: "nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute",
    }
    k8s, ir = compile_with(env, tmp_path, monkeypatch)
    train = k8s["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu"}
    assert train["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ]
    # The training task carries the same settings as environment variables, so the TrainJob/PyTorchJob
    # it launches (cluster_train gets them from platform.settings) places its pods the same way.
    task_env = container_env(ir, "exec-train")
    assert gpu_nodes.gpu_node_selector(task_env) == train["nodeSelector"]["labels"]
    assert gpu_nodes.gpu_tolerations(task_env) == train["tolerations"]


def test_no_gpus_no_placement_and_defaults_without_settings(tmp_path, monkeypatch):
    k8s, _ = compile_with({}, tmp_path, monkeypatch, profile="local")  # local profile: CPU nodes
    assert "nodeSelector" not in k8s["exec-train"] and "tolerations" not in k8s["exec-train"]
    k8s, _ = compile_with({}, tmp_path, monkeypatch, profile="full")
    assert "nodeSelector" not in k8s["exec-train"]
    assert k8s["exec-train"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize(
    "name, value, problem",
    [
        (
            gpu_nodes.NODE_SELECTOR_ENV,
            "nvidia.com/gpu.present",
            "'nvidia.com/gpu.present' is not a node label key=value",
        ),
        (gpu_nodes.TOLERATIONS_ENV, "nvidia.com/gpu:NoScheduel", "'nvidia.com/gpu:NoScheduel' is not a taint"),
    ],
)
def test_bad_setting_is_one_line_exit_2_before_compiling(tmp_path, name, value, problem):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "compile", "dcgan", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, name: value},
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {name}={value!r}: {problem}") and f"write e.g. {name}=" in line
    assert not (tmp_path / "dcgan.yaml").exists()
