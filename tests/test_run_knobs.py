"""The run knobs, declared once (ganforge.platform.run_knobs): the pipeline's parameters, the options of
``python -m pipelines run`` and the start-run component's signature all come from (or are held to) it."""

from __future__ import annotations

import inspect

import pytest

from conftest import PIPELINE_PARAMETERS
from ganforge.config import ConfigError
from ganforge.platform import run_knobs
from ganforge.platform.run_knobs import RUN_KNOBS, check_signature, knob_layers


def test_values_as_kfp_passes_them_become_typed_config_layers_and_unset_ones_drop():
    assert knob_layers({"epochs": "3.0", "source": "", "nproc": 0, "promotion_margin": "0.5", "launcher": None}) == {
        "train": {"epochs": 3},
        "registry": {"promotion_margin": 0.5},
    }
    assert knob_layers({"fid_samples": 48}) == {"eval": {"n_samples": 48}}


def test_an_unknown_knob_or_a_bad_value_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError, match="'epoch' is not a run knob.*epochs.*--set"):
        knob_layers({"epoch": 3})
    with pytest.raises(ConfigError, match=r"epochs='many': give a int \(it sets train.epochs\)"):
        knob_layers({"epochs": "many"})


def test_every_knob_sets_a_real_config_field():
    from ganforge.config import build_config

    cfg = build_config("dcgan", "tiny")
    for k in RUN_KNOBS:
        group, field = k.field.split(".")
        assert isinstance(getattr(getattr(cfg, group), field), k.type), k


def test_the_compiled_pipeline_and_the_run_command_take_the_knobs_from_the_table():
    from pipelines.factory import build_pipeline

    spec = build_pipeline("dcgan", "tiny").component_spec
    assert set(spec.inputs) == PIPELINE_PARAMETERS == {"profile", "overrides", *run_knobs.NAMES}
    assert {n: spec.inputs[n].type for n in run_knobs.NAMES} == {
        k.name: {int: "Integer", float: "Float", str: "String"}[k.type] for k in RUN_KNOBS
    }


def test_run_options_are_the_knobs_marked_as_options(capsys):
    from pipelines.__main__ import main_run

    with pytest.raises(SystemExit):
        main_run(["--help"])
    text = capsys.readouterr().out
    # what `python -m pipelines run` has always offered; nnodes and launcher are for cluster runs (--param)
    assert {k.name for k in RUN_KNOBS if k.option} == {"epochs", "source", "nproc", "fid_samples", "promotion_margin"}
    for k in RUN_KNOBS:
        assert (f"--{k.name.replace('_', '-')}" in text) == k.option, k.name


def test_a_component_whose_knob_parameters_drift_is_refused():
    from components.start_run import NOT_KNOBS, start_run

    check_signature(start_run.python_func, NOT_KNOBS)

    def drifted(pipeline: str, profile: str, epochs: int, kfp_run: str, overrides: str = ""):
        pass

    with pytest.raises(TypeError, match="knob parameters must be"):
        check_signature(drifted, NOT_KNOBS)
    params = inspect.signature(start_run.python_func).parameters
    assert [n for n in params if n not in NOT_KNOBS] == list(run_knobs.NAMES)
