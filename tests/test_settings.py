"""Deployment settings are read in one place (ganforge.platform.settings), with one precedence for
the code's revision."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import ROOT
from ganforge.platform import gpu_nodes
from ganforge.platform.settings import Settings, SettingsError, git_commit


def test_an_empty_environment_gives_a_laptops_defaults():
    s = Settings.from_env({})
    assert (s.artifact_root, s.image, s.gpus_per_node, s.job_poll_s, s.git_sha) == ("", "", None, 10.0, "")
    assert s.gpu_node_selector == {} and s.gpu_tolerations == (gpu_nodes.GPU_TOLERATION,)
    assert gpu_nodes.parse_tolerations(gpu_nodes.DEFAULT_TOLERATIONS) == [gpu_nodes.GPU_TOLERATION]


def test_every_variable_lands_in_its_field():
    s = Settings.from_env(
        {
            "GANFORGE_ARTIFACT_ROOT": "s3://bucket/prefix/",
            "GANFORGE_IMAGE": "reg/ganforge-gpu:1",
            "GANFORGE_NAMESPACE": "ml",
            "GANFORGE_GPUS_PER_NODE": "0",
            "GANFORGE_JOB_POLL_S": "0.5",
            "GANFORGE_GPU_NODE_SELECTOR": "pool=gpu",
            "GANFORGE_GPU_TOLERATIONS": "",
            "GANFORGE_GIT_SHA": " abc ",
            "GANFORGE_MLFLOW_RUN_ID": "r1",
        }
    )
    assert s == Settings(
        artifact_root="s3://bucket/prefix",
        image="reg/ganforge-gpu:1",
        namespace="ml",
        gpus_per_node=0,
        job_poll_s=0.5,
        gpu_node_selector={"pool": "gpu"},
        gpu_tolerations=(),
        git_sha="abc",
        mlflow_run_id="r1",
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("GANFORGE_GPUS_PER_NODE", "-1"),
        ("GANFORGE_GPUS_PER_NODE", "two"),
        ("GANFORGE_JOB_POLL_S", "0"),
        ("GANFORGE_JOB_POLL_S", "soon"),
    ],
)
def test_a_bad_number_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=re.escape(f"{name}={value!r} must be")):
        Settings.from_env({name: value})


def test_the_gpu_rule_has_one_home():
    from ganforge.config import build_config

    full, local = build_config("dcgan", "full"), build_config("dcgan", "local")
    assert gpu_nodes.gpus_per_node(full) == full.train.nproc and gpu_nodes.gpus_per_node(local) == 0
    assert gpu_nodes.gpus_per_node(full, override=0) == 0


def test_git_commit_an_explicit_sha_wins_then_git_then_unknown(tmp_path):
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    head = git.stdout.strip()
    assert git_commit(Settings(git_sha="abc1234")) == "abc1234"
    assert git_commit(Settings(), source=ROOT) == head and len(head) == 40
    assert git_commit(Settings(), source=tmp_path) == "unknown"  # not a git checkout
