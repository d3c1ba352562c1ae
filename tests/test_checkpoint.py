"""The checkpoint format has one home (ganforge.checkpoint): its version, what ``epoch`` means in
every file, and format-1 checkpoints (no version key, 0-based epoch) still load and resume."""

from __future__ import annotations

import ast

import pytest
import torch

from conftest import ROOT
from ganforge import checkpoint
from ganforge.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    VERSION_KEY,
    CheckpointError,
    epoch_number,
    list_snapshots,
    load_generator,
    read_checkpoint,
)
from ganforge.config import build_config
from ganforge.train import train


def _two_epochs():
    # 512 tiny images / batch 32 = 16 steps per epoch: step 20 is 4 steps into epoch 2.
    return build_config(
        "dcgan", "tiny", {"train": {"epochs": 2, "max_steps": 20, "checkpoint_every": 4, "snapshot_every": 1}}
    )


def _as_format_1(ckpt: dict) -> dict:
    """What ganforge wrote before format 2: no version key, checkpoint.pt's epoch the 0-based index."""
    old = {k: v for k, v in ckpt.items() if k != VERSION_KEY}
    if "opt_G" in old:
        old["epoch"] = ckpt["epoch"] - 1
    return old


def test_epoch_means_the_same_in_checkpoint_snapshots_and_result(fashion_train, tmp_path):
    result = train(_two_epochs(), fashion_train, tmp_path)
    ckpt = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt[VERSION_KEY] == FORMAT_VERSION
    assert [(e, read_checkpoint(p)["step"]) for e, p in list_snapshots(tmp_path)] == [(1, 16), (2, 20)]
    assert ckpt["step"] == 20 and ckpt["epoch"] == result.epoch == epoch_number(20, 16) == 2
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]


def test_a_format_1_checkpoint_loads_as_the_current_format_and_resumes(fashion_train, tmp_path):
    run = tmp_path / "run"
    train(_two_epochs(), fashion_train, run)
    current = read_checkpoint(run / CHECKPOINT_NAME)
    snapshot = read_checkpoint(list_snapshots(run)[-1][1])
    torch.save(_as_format_1(current), run / CHECKPOINT_NAME)  # unchecksummed, as the oldest ones were
    torch.save(_as_format_1(snapshot), tmp_path / "old_snapshot.pt")

    upgraded = read_checkpoint(run / CHECKPOINT_NAME)
    assert upgraded[VERSION_KEY] == FORMAT_VERSION and upgraded["epoch"] == current["epoch"] == 2
    assert read_checkpoint(tmp_path / "old_snapshot.pt")["epoch"] == snapshot["epoch"] == 2  # snapshots were 1-based
    G, cfg = load_generator(run / CHECKPOINT_NAME)
    assert G(torch.randn(2, cfg.model.nz)).shape == (2, 1, 28, 28)
    longer = build_config(
        "dcgan", "tiny", {"train": {"epochs": 2, "max_steps": 24, "checkpoint_every": 4, "snapshot_every": 1}}
    )
    resumed = train(longer, fashion_train, run, resume=True)
    assert resumed.step == 24 and read_checkpoint(run / CHECKPOINT_NAME)[VERSION_KEY] == FORMAT_VERSION


def test_a_newer_format_is_refused_by_name(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    checkpoint.atomic_write_bytes(
        path,
        checkpoint.checkpoint_bytes(
            {"config": build_config("dcgan", "tiny").to_dict(), "step": 1, VERSION_KEY: FORMAT_VERSION + 1}
        ),
    )
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}, newer than this ganforge reads"):
        read_checkpoint(path)


def test_no_module_but_the_checkpoint_module_spells_the_checkpoint_name():
    spelled = []
    for f in (ROOT / "src" / "ganforge").rglob("*.py"):
        if f.name != "checkpoint.py":
            spelled += [
                f"{f.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(ast.parse(f.read_text()))
                if isinstance(node, ast.Constant) and node.value == CHECKPOINT_NAME
            ]
    assert not spelled, f"use ganforge.checkpoint.CHECKPOINT_NAME instead of the literal: {spelled}"
