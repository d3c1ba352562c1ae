"""`make ablation [PIPELINE=stylegan] ABL=…` (docs/ablations.md): each name is one real switch on the preset's
`quality` config, trained exactly to the epoch of that profile's first snapshot, so its FID-2k point reads against
the quality run's own snapshot (the baseline) and the `seed1` row (the noise). The runs take 10–35 min of a core
each, so this reads the commands `make -n` prints and settles every one of their configs for real."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import fields, is_dataclass

import pytest

from conftest import ROOT, make_dry_run, opt, shown_commands
from ganforge.config import build_config

SHOWN_ABLATION = re.compile(r"`(make ablation (?:PIPELINE=[\w-]+ )?ABL=[\w-]+)`")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _names(pipeline: str) -> list[str]:
    """The ablation names the Makefile offers, read from its own refusal of an unknown name."""
    done = _make("ablation", f"PIPELINE={pipeline}", "ABL=no-such-switch")
    assert done.returncode == 2, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"ABL='no-such-switch': for PIPELINE={pipeline} give one of "), first
    return first.split(" give one of ")[1].split(",")[0].split()


def _commands(pipeline: str, abl: str) -> tuple[list[str], list[str]]:
    ran = make_dry_run(f"ablation PIPELINE={pipeline} ABL={abl}")
    return ran["train"], ran["curve"]


@pytest.mark.parametrize("pipeline", ["dcgan", "stylegan"])
def test_every_ablation_is_one_real_switch_at_the_first_snapshot(pipeline):
    names = _names(pipeline)
    assert {"baseline", "seed1"} <= set(names) and len(names) >= 3, names
    base_cfg = build_config(pipeline, "quality")
    outs = set()
    for abl in names:
        train, curve = _commands(pipeline, abl)
        assert opt(train, "--preset") == pipeline and opt(train, "--profile") == "quality", train
        sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
        cfg = build_config(pipeline, "quality", sets)  # a typo in a key or value raises ConfigError here
        # trained to exactly the epoch of the quality run's first snapshot: that snapshot is the baseline
        assert cfg.train.epochs == base_cfg.train.snapshot_every, (abl, sets)
        changed = {
            f"{g.name}.{k}"
            for g in fields(cfg)
            if is_dataclass(getattr(cfg, g.name))
            for k, v in vars(getattr(cfg, g.name)).items()
            if v != getattr(getattr(base_cfg, g.name), k)
        } - {"train.epochs"}
        if abl == "baseline":
            assert not changed, changed
        else:
            assert changed, f"{abl}: {sets} changes nothing in the {pipeline} quality config"
        if abl == "seed1":
            assert changed == {"train.seed"}, changed
        assert "--resume" in train and "--mlflow" in train
        out = opt(train, "--out")
        assert opt(curve, "--run") == out, (train, curve)
        assert opt(train, "--data").endswith("/train") and opt(curve, "--data").endswith("/test")
        outs.add(out)
    assert len(outs) == len(names), "two ablations would share (and resume) one run directory"


def test_ablation_refuses_a_preset_without_ablations():
    done = _make("ablation", "PIPELINE=gan", "ABL=seed1")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "PIPELINE='gan': ablations are defined for dcgan and stylegan, e.g. make ablation PIPELINE=stylegan ABL=r1-off"
    )


def test_every_shown_ablation_command_trains_its_named_switch():
    """Each `make ablation … ABL=name` the README and docs/ show, as written: a name the Makefile offers for that
    preset, training it and scoring the same run (``make -n`` through bash, as a user types it)."""
    commands = shown_commands(SHOWN_ABLATION)
    assert any("PIPELINE=stylegan" in c for c in commands) and any("PIPELINE" not in c for c in commands), commands
    for command in commands:
        words = dict(w.split("=", 1) for w in shlex.split(command)[2:])
        pipeline = words.get("PIPELINE", "dcgan")
        assert words["ABL"] in _names(pipeline), command
        train, curve = _commands(pipeline, words["ABL"])
        ran = make_dry_run(command.removeprefix("make "))
        assert (ran["train"], ran["curve"]) == (train, curve), command
        assert opt(train, "--preset") == pipeline and opt(curve, "--run") == opt(train, "--out"), command
