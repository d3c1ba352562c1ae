"""The run config of a ``ganforge`` command, settled once from its arguments.

``--preset``/``--profile`` (or a saved ``--config-json``), then ``--set`` overrides and ``--nproc``
(checked against this machine's GPUs and cores before any process starts).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .config import PRESETS, PROFILES, ConfigError, PipelineConfig, build_config, parse_override
from .launch import AUTO, auto_nproc, check_nproc, visible_gpus


def config_from_args(args) -> PipelineConfig:
    """Preset + profile (or a saved config.json), then --set overrides: settled once, here."""
    sets = list(args.set or [])
    nproc = getattr(args, "nproc", None)
    if nproc == AUTO:
        nproc = auto_nproc(visible_gpus())
    if nproc is not None:
        if nproc < 1:
            raise ConfigError(
                f"--nproc {nproc}: give the number of training processes on this machine, 1 or more "
                "(e.g. --nproc 2), or leave it out to use the config's train.nproc"
            )
        if not under_torchrun():  # before the config's own checks (batch divisible by ranks) and any process
            check_local_ranks(nproc)
        sets.append(f"train.nproc={nproc}")
    if getattr(args, "config_json", None):
        path = Path(args.config_json)
        d = _read_config_json(path)
        try:
            for text in sets:
                group, key, value = parse_override(text)
                if not isinstance(d.setdefault(group, {}), dict):
                    raise ConfigError(f"group {group!r} is not an object")
                d[group][key] = value
            return PipelineConfig.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise ConfigError(
                f"--config-json {path}: {e}. Fix: use the config.json a ganforge run wrote, "
                "or --preset/--profile with --set"
            ) from e
    return build_config(args.preset, args.profile, sets)


def check_local_ranks(nproc: int, what: str = "--nproc") -> None:
    from .threads import usable_cores

    check_nproc(nproc, visible_gpus(), usable_cores(), what)


def nproc_arg(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of ranks (e.g. 2) or auto") from None


def _read_config_json(path: Path) -> dict:
    """A saved config.json as a dict with name and profile; ConfigError naming the file otherwise."""
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config-json {path} does not exist; pass the config.json of a run directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config-json {path} cannot be read ({e}); check the path and its permissions") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--config-json {path} is not valid JSON ({e}); pass the config.json a ganforge run wrote"
        ) from None
    missing = [k for k in ("name", "profile") if not isinstance(d, dict) or k not in d]
    if missing:
        raise ConfigError(
            f"--config-json {path} has no {' or '.join(repr(k) for k in missing)}: it is not a ganforge "
            "config. Fix: pass the config.json a ganforge run wrote (it names the preset and profile), "
            "or use --preset/--profile"
        )
    return d


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="dcgan", choices=sorted(PRESETS), help="named pipeline (default dcgan)")
    p.add_argument("--profile", default="local", choices=sorted(PROFILES), help="compute profile (default local)")
    p.add_argument("--config-json", help="a saved config.json (overrides --preset/--profile)")
    p.add_argument(
        "--set",
        action="append",
        metavar="GROUP.FIELD=VALUE",
        help="override one config field, e.g. --set train.epochs=3 (repeatable)",
    )


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ
