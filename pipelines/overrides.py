"""``--set group.field=value`` for ``python -m pipelines run|submit|schedule``: the same typed config
overrides as ``ganforge train --set``, carried to the DAG in its ``overrides`` parameter (a JSON list
of the strings), which start_run merges into the run's config after the other parameters."""

from __future__ import annotations

import argparse
import json

from ganforge.config import build_config

PARAMETER = "overrides"


def add_set_argument(p: argparse.ArgumentParser) -> None:
    """``--set group.field=value`` (repeatable)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="override one config field for this run, e.g. --set train.epochs=2 (repeatable); "
        "checked against the field's type before anything runs",
    )


def overrides_parameter(pipeline: str, profile: str, sets: list[str]) -> str | None:
    """The ``overrides`` pipeline parameter for ``--set`` values (None without any), after checking every
    key and value against the typed config: a ConfigError (exit 2, one line) before any work."""
    if not sets:
        return None
    build_config(pipeline, profile, list(sets))
    return json.dumps(list(sets))
