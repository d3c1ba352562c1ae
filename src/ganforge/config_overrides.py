"""``--set group.field=value`` overrides: parsed, typed against the field's annotation and checked."""

from __future__ import annotations

import json
import math
import types
import typing
from typing import Any

from .config_groups import ConfigError, _check, field_type

_TRUE, _FALSE, _NONE = ("true", "1"), ("false", "0"), ("none", "null")


def parse_value(key: str, raw: str, annotation: Any) -> Any:
    """``raw`` as a value of the field's type: bool accepts true/false/1/0 (any case), floats must be
    finite, ``Optional`` fields take none/null; anything else is a ConfigError naming the field."""
    text = raw.strip()
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X] and X | None
        if text.lower() in _NONE:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        optional = " or none"
    else:
        optional = ""
    if annotation is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{key}={raw!r}: {key} is a boolean, write true, false, 1 or 0{optional}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: {key} is an integer, e.g. {key}=3{optional}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{key}={raw!r}: {key} is a finite number, e.g. {key}=0.5{optional}")
        return value
    return raw


def parse_override(text: str) -> tuple[str, str, Any]:
    """``train.epochs=3`` → ("train", "epochs", 3), typed and checked against the field's type.

    Unknown keys get a "did you mean" suggestion; a value that does not fit the type is refused.
    """
    key, sep, raw = text.partition("=")
    group, dot, name = key.strip().partition(".")
    _check(bool(sep and dot and name), f"override {text!r} must look like group.field=value, e.g. train.epochs=3")
    return group, name, parse_value(f"{group}.{name}", raw, field_type(group, name))


def parse_overrides(texts: list[str]) -> dict:
    """``["train.epochs=3", "eval.n_samples=200"]`` → ``{"train": {"epochs": 3}, "eval": {"n_samples": 200}}``."""
    nested: dict = {}
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"override {text!r} must be a string group.field=value, e.g. train.epochs=3")
        g, k, v = parse_override(text)
        nested.setdefault(g, {})[k] = v
    return nested


def overrides_from_json(text: str) -> list[str]:
    """The pipelines' ``overrides`` parameter: a JSON list of ``group.field=value`` strings ("" = none)."""
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f'overrides {text!r} is not JSON ({e}); write a JSON list such as ["train.epochs=2", "eval.n_samples=200"]'
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'overrides {text!r} must be a JSON list of group.field=value strings, e.g. ["train.epochs=2"]'
        )
    parse_overrides(value)  # every key and type checked here, before any work
    return value
