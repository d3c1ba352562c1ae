"""One override syntax, ``--set group.field=value``, typed by the config's dataclasses, for
``ganforge train``, ``python -m pipelines run|submit|schedule`` and the Makefile's ``SET=``.
Bad keys and values stop before any work: exit 2, one line naming the problem and the fix."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env
from ganforge.config import ConfigError, build_config, overrides_from_json, parse_override
from ganforge.platform.steps import settle_config

# `make run` of the whole DAG (subprocess timeout 1200 s) runs inside a test: above the suite's default timeout.
pytestmark = pytest.mark.timeout(1800)


@pytest.mark.parametrize(
    "text, value",
    [
        ("train.channels_last=true", True),
        ("train.channels_last=FALSE", False),
        ("train.channels_last=1", True),
        ("train.channels_last=0", False),
        ("train.epochs=3", 3),
        ("train.lr_d=4e-4", 4e-4),
        ("train.ema_decay=0", 0.0),
        ("data.limit=none", None),
        ("data.limit=NULL", None),
        ("data.limit=100", 100),
        ("train.diffaugment=color,translation", "color,translation"),
        ("data.source=s3://b/x=y", "s3://b/x=y"),
    ],
)
def test_values_parse_as_the_fields_type(text, value):
    group, name, parsed = parse_override(text)
    assert parsed == value and type(parsed) is type(value)
    assert getattr(getattr(build_config("dcgan", "tiny", [text]), group), name) == value


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.epochs=abc", "train.epochs is an integer"),
        ("train.epochs=2.5", "train.epochs is an integer"),
        ("train.channels_last=yes", "train.channels_last is a boolean, write true, false, 1 or 0"),
        ("train.compile=", "train.compile is a boolean"),
        ("train.lr_g=nan", "train.lr_g is a finite number"),
        ("train.lr_g=inf", "train.lr_g is a finite number"),
        ("train.lr_g=fast", "train.lr_g is a finite number"),
        ("data.limit=all", "data.limit is an integer, e.g. data.limit=3 or none"),
        ("train.epohcs=2", "unknown config key 'train.epohcs': did you mean 'train.epochs'?"),
        ("trian.epochs=2", "did you mean 'train.epochs'?"),
        ("eval.n_sample=2", "did you mean 'eval.n_samples'?"),
        ("zzz.qqq=1", "unknown config key 'zzz.qqq': known groups: data, model, train, eval, registry"),
        ("epochs=2", "must look like group.field=value"),
    ],
)
def test_bad_keys_and_values_are_refused_with_the_fix(text, message):
    with pytest.raises(ConfigError) as e:
        build_config("dcgan", "tiny", [text])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_pipeline_overrides_parameter_is_checked_and_wins_over_the_knobs():
    cfg = settle_config("dcgan", "tiny", {"epochs": 3}, '["train.epochs=4", "eval.n_samples=48"]')
    assert (cfg.train.epochs, cfg.eval.n_samples) == (4, 48)
    assert settle_config("dcgan", "tiny", {"epochs": 3}, "").train.epochs == 3
    for bad, message in (
        ('["train.epochs=abc"]', "train.epochs is an integer"),
        ("train.epochs=2", "not JSON"),
        ('{"train.epochs": 2}', "JSON list"),
        ('["train.epohcs=2"]', "did you mean"),
    ):
        with pytest.raises(ConfigError, match=message):
            overrides_from_json(bad)


def _one_line_exit_2(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_cli_train_refuses_bad_set_before_any_work(tmp_path):
    for text, needle in (
        ("train.epochs=abc", "train.epochs is an integer"),
        ("train.channels_last=yes", "write true, false, 1 or 0"),
        ("train.epohcs=2", "did you mean 'train.epochs'?"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ganforge.cli",
                "train",
                "--preset",
                "dcgan",
                "--profile",
                "tiny",
                "--data",
                str(tmp_path / "no-data"),
                "--out",
                str(tmp_path / "run"),
                "--set",
                text,
            ],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        _one_line_exit_2(done, "ganforge train: error:", needle)
    assert not (tmp_path / "run").exists()


def test_pipelines_run_refuses_bad_set_before_any_work(tmp_path):
    home = tmp_path / "home"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            "dcgan",
            "--profile",
            "tiny",
            "--set",
            "train.epochs=2",
            "--set",
            "eval.n_sample=200",
        ],
        env=cli_env(GANFORGE_HOME=str(home)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_line_exit_2(done, "error: unknown config key 'eval.n_sample': did you mean 'eval.n_samples'?")
    assert not home.exists(), "nothing ran"


def test_make_passes_set_to_run_submit_and_schedule():
    """`make -n` prints the commands the targets would run: SET becomes --set arguments for all three."""
    for target, extra in (("run", []), ("submit", []), ("schedule", ["CRON=0 0 3 * * 0"])):
        done = subprocess.run(
            ["make", "-n", target, "PIPELINE=dcgan", "SET=train.epochs=2 eval.n_samples=200", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (line,) = [ln for ln in done.stdout.splitlines() if f"-m pipelines {target} dcgan" in ln]
        assert line.endswith("--set train.epochs=2 --set eval.n_samples=200"), line


@pytest.mark.slow
def test_readme_make_run_with_set(tmp_path):
    """The README's command, exactly: the --set values reach the DAG's config (MLflow params); the trial is
    registered under registry.model_name (not `dcgan`), and the run's summary reads it back from there."""
    from mlflow import MlflowClient

    home = tmp_path / "home"
    done = subprocess.run(
        'make run PIPELINE=dcgan PROFILE=tiny SET="train.max_steps=4 eval.n_samples=48 registry.model_name=dcgan-trial"',  # noqa: E501 (as written)
        shell=True,
        cwd=ROOT,
        env=cli_env(GANFORGE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    assert run.data.params["train.max_steps"] == "4" and run.data.params["eval.n_samples"] == "48"
    assert run.info.status == "FINISHED"
    assert json.loads(run.data.params["train.max_steps"]) != build_config("dcgan", "tiny").train.max_steps
    assert math.isfinite(run.data.metrics["fid"])
    assert "models:/dcgan-trial/1" in done.stdout, done.stdout[-2000:]
    assert [m.name for m in client.search_registered_models()] == ["dcgan-trial"]
