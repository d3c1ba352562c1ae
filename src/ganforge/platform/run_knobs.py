"""The per-run knobs of a pipeline, declared once: each a KFP pipeline parameter that sets one config field.

The factory (``pipelines/factory.py``) makes them the pipeline's parameters, ``python -m pipelines run``
its options (those with ``option``), and the start-run component (``components/start_run.py``, whose
signature KFP needs written out; ``check_signature`` holds it to this table) hands their values to
``knob_layers``. Any other field is set with ``--set group.field=value`` (the ``overrides`` parameter),
which wins over the knobs.

KFP parameters cannot be None, so a knob's "unset" is its zero value (0, "", 0.0): the profile's value
then stands.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import ConfigError


@dataclass(frozen=True)
class RunKnob:
    name: str  # the pipeline parameter (and --NAME with dashes for ``python -m pipelines run``)
    field: str  # the config field it sets, group.field
    type: type  # int, float or str
    help: str
    option: bool = True  # offered as an option of ``python -m pipelines run``

    @property
    def unset(self):
        return self.type()


RUN_KNOBS: tuple[RunKnob, ...] = (
    RunKnob("epochs", "train.epochs", int, "training epochs (default: the profile's)"),
    RunKnob("source", "data.source", str, "data source (default: the preset's)"),
    RunKnob("nproc", "train.nproc", int, "training ranks on this machine (torchrun)"),
    RunKnob("nnodes", "train.nnodes", int, "training nodes (a cluster launcher)", option=False),
    RunKnob("launcher", "train.launcher", str, "local, trainjob or pytorchjob", option=False),
    RunKnob("fid_samples", "eval.n_samples", int, "generated samples for FID/KID"),
    RunKnob("promotion_margin", "registry.promotion_margin", float, "FID margin a challenger must beat"),
)
BY_NAME = {k.name: k for k in RUN_KNOBS}
NAMES = tuple(BY_NAME)


def knob_layers(values: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """``{"epochs": 3, "source": ""}`` → ``{"train": {"epochs": 3}}``: set knobs as config layers, each value
    of its knob's type (values may arrive as KFP's strings), unset ones (zero, empty, None) dropped."""
    layers: dict[str, dict[str, object]] = {}
    for name, value in values.items():
        if name not in BY_NAME:
            raise ConfigError(f"{name!r} is not a run knob; the knobs are {', '.join(NAMES)} (others: --set)")
        knob = BY_NAME[name]
        if value is None or value == "":
            continue
        try:
            value = knob.type(float(value)) if knob.type is int else knob.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: give a {knob.type.__name__} (it sets {knob.field})") from None
        if value != knob.unset:
            group, field = knob.field.split(".")
            layers.setdefault(group, {})[field] = value
    return layers


def pipeline_parameters() -> list[inspect.Parameter]:
    """The knobs as pipeline-function parameters, each defaulting to its unset value."""
    return [
        inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=k.unset, annotation=k.type)
        for k in RUN_KNOBS
    ]


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--epochs``, ``--source``, … for the knobs that are options (unset: None, the profile's value)."""
    for k in RUN_KNOBS:
        if k.option:
            parser.add_argument(f"--{k.name.replace('_', '-')}", dest=k.name, type=k.type, help=k.help)


def option_values(args: argparse.Namespace) -> dict[str, object]:
    """The knob options' values from parsed arguments (None when not given)."""
    return {k.name: getattr(args, k.name) for k in RUN_KNOBS if k.option}


def check_signature(fn: Callable, others: tuple[str, ...]) -> None:
    """``fn``'s parameters are ``others`` plus every knob, with the knob's type: a component that must
    spell its parameters out (KFP reads them from its source) cannot drift from ``RUN_KNOBS``."""
    params = inspect.signature(fn).parameters
    got = {n: p.annotation for n, p in params.items() if n not in others}
    want = {k.name: k.type for k in RUN_KNOBS}
    if got != want or not set(others) <= set(params):
        raise TypeError(f"{fn.__name__}{inspect.signature(fn)}: its knob parameters must be {want} (run_knobs)")
