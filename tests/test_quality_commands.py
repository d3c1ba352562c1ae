"""Every `make quality …` command the README and docs/ show, as written: the runs take one to three hours of
a core each, so this expands each one with `make -n` (the shell's `$GANFORGE_HOME` included) and settles what
it would run — the config for real, the run directory, the evaluation — instead of training."""

from __future__ import annotations

import re
import shlex

from conftest import make_dry_run, opt, shown_commands
from ganforge.config import build_config

SHOWN_QUALITY = re.compile(r"`(make quality [^`]*)`")


def _dry_run(command: str, home) -> tuple[list[str], list[str]]:
    """The train and evaluate lines ``command`` would run (``make -n`` in its place, through bash as typed)."""
    assert command.startswith("make quality ")
    ran = make_dry_run(command.removeprefix("make "), GANFORGE_HOME=str(home))
    return ran["train"], ran["evaluate"]


def test_every_shown_quality_command_settles_to_its_own_run(tmp_path):
    commands = shown_commands(SHOWN_QUALITY)
    assert len(commands) >= 8 and any("SET=" in c for c in commands), commands
    runs = {}
    for command in commands:
        words = dict(w.split("=", 1) for w in shlex.split(command)[2:])
        train, evaluate = _dry_run(command, tmp_path)
        preset, profile = opt(train, "--preset"), opt(train, "--profile")
        assert preset == words["PIPELINE"] and profile == words.get("PROFILE", "quality"), (command, train)
        sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
        assert sets == words.get("SET", "").split(), (command, sets)
        cfg = build_config(preset, profile, sets)  # a misspelt key or a bad value raises ConfigError here
        if "SET" in words:
            assert cfg != build_config(preset, profile), f"{command}: SET changes nothing"
        out = opt(train, "--out")
        assert out.startswith(str(tmp_path)), (command, out)  # under GANFORGE_HOME, as the README says
        if "QUALITY_RUN" in words:
            assert out == words["QUALITY_RUN"].replace("$GANFORGE_HOME", str(tmp_path)), (command, out)
        assert "--resume" in train and "--mlflow" in train, train
        # images: FID-10k against the test split; audio (wavegan): the profile's N, scored by the classifier of
        # the preset's reference split, on the synthesised digits rather than Fashion-MNIST
        n = str(cfg.eval.n_samples) if cfg.data.kind == "audio" else "10000"
        assert opt(evaluate, "--run") == out and opt(evaluate, "--n") == n, evaluate
        assert opt(train, "--data").endswith("/train"), train
        assert opt(evaluate, "--data").endswith("/" + cfg.data.reference_split), evaluate
        data_dir = "/data/sc09/" if cfg.data.source == "espeak:sc09" else "/data/fashion-mnist/"
        assert data_dir in opt(train, "--data") and data_dir in opt(evaluate, "--data"), (train, evaluate)
        # a second seed must train its own run, not resume (and overwrite) the first seed's
        assert out not in runs, f"{command} and {runs.get(out)} share the run directory {out}"
        runs[out] = command
