"""The pipeline steps as plain functions (what the components call), without KFP."""

import pytest

from conftest import cli_env
from ganforge.checkpoint import read_checkpoint
from ganforge.config import build_config
from ganforge.platform.steps import settle_config, train_step
from ganforge.train import TrainingError


def test_settle_config_treats_zero_and_empty_knobs_as_profile_defaults():
    cfg = settle_config(
        "dcgan",
        "tiny",
        {"epochs": 0, "nproc": 0, "launcher": "", "source": "", "fid_samples": 32},
    )
    assert cfg == build_config("dcgan", "tiny", {"eval": {"n_samples": 32}})


def test_train_step_with_two_ranks_runs_torchrun(fashion_train, tmp_path, monkeypatch):
    for key, value in cli_env().items():
        monkeypatch.setenv(key, value)
    cfg = build_config("dcgan", "tiny", {"train": {"nproc": 2, "max_steps": 4}})
    result = train_step(cfg.to_json(), str(fashion_train), str(tmp_path / "model"), samples_path=str(tmp_path / "s"))
    assert result["step"] == 4 == read_checkpoint(tmp_path / "model" / "checkpoint.pt")["step"]
    assert (tmp_path / "s").read_bytes()[:4] == b"\x89PNG"


def test_two_nodes_need_a_cluster_launcher(fashion_train, tmp_path):
    cfg = build_config("dcgan", "tiny", {"train": {"nnodes": 2}})
    with pytest.raises(TrainingError, match="train.launcher to trainjob or pytorchjob"):
        train_step(cfg.to_json(), str(fashion_train), str(tmp_path / "model"))
