"""The training worker: what torchrun ranks and cluster job pods run, ``python -m ganforge.platform.worker train``.

``python -m ganforge.platform.worker train --config-json PATH --data DATA --out OUT [--resume]``
trains the settled config (the config.json the pipeline's start-run step wrote, passed on unchanged) on a
local directory or ``s3://`` prefix into one (``cluster_train.train_staged``), logging rank 0's curves
into the pipeline's MLflow run named by GANFORGE_MLFLOW_RUN_ID. It belongs to the platform: the
``ganforge`` command line (the core) stays the users' front door and opens its own MLflow run with
``--mlflow``; this entry only joins a run the pipeline opened.

Exit statuses as ``ganforge``'s: 2 with one line for a GanforgeError, 130 for Ctrl-C, 143 for SIGTERM
(training stops at a step with a checkpoint, ``ganforge.stop``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..config import ConfigError, PipelineConfig
from ..errors import GanforgeError
from ..fileio import is_s3
from .settings import WORKER_MODULE, Settings

PROG = "ganforge-worker"
__all__ = ["WORKER_MODULE", "build_parser", "main", "read_config", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="a training rank of a pipeline run (torchrun, pods)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the settled config, logging into the pipeline's MLflow run")
    p.add_argument("--config-json", required=True, help="the run's settled config.json")
    p.add_argument("--data", required=True, help="prepared dataset directory or s3:// prefix")
    p.add_argument("--out", required=True, help="run directory or s3:// prefix")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    return parser


def read_config(path: str | Path) -> PipelineConfig:
    """The settled config from ``path``; a ConfigError naming the file when it is missing or not one."""
    path = Path(path)
    try:
        return PipelineConfig.from_json(path.read_text())
    except (OSError, ValueError, TypeError, ConfigError) as e:
        raise ConfigError(
            f"--config-json {path}: {e}. Fix: pass the config.json the pipeline's start-run step settled"
        ) from e


def train(cfg: PipelineConfig, data: str, out: str, resume: bool, run_id: str) -> dict:
    """Train this rank; rank 0 logs its losses into MLflow run ``run_id`` (none when empty)."""
    from . import tracking
    from .cluster_train import train_staged

    if cfg.model.arch == "cyclegan":
        raise ConfigError("the worker trains generator presets; cyclegan trains in its pipeline step's process")
    is_main = int(os.environ.get("RANK", "0")) == 0
    callback = None
    if run_id and is_main:
        tracking.configure()
        callback = tracking.MlflowMetricsCallback(run_id)
    try:
        with _locked(out, is_main):
            result = train_staged(cfg, data, out, resume=resume, on_metrics=callback)
    finally:  # a stopped training still sends its buffered curve points, up to its last step
        if callback is not None:
            callback.flush()
    checkpoint = f"{out.rstrip('/')}/{result.checkpoint.name}" if is_s3(out) else str(result.checkpoint)
    return {"step": result.step, "epoch": result.epoch, "checkpoint": checkpoint, "main": is_main}


@contextlib.contextmanager
def _locked(out: str, is_main: bool) -> Iterator[None]:
    """A local run directory locked for one writer by rank 0 (``ganforge.runlock``)."""
    if is_s3(out) or not is_main:
        yield
        return
    from ..runlock import run_lock

    with run_lock(out):
        yield


def main(argv: list[str] | None = None) -> int:
    from .. import stop, threads

    args = build_parser().parse_args(argv)
    try:
        with stop.raising_on_sigterm():
            threads.configure(processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            cfg = read_config(args.config_json)
            out = train(cfg, args.data, args.out, args.resume, Settings.from_env().mlflow_run_id)
        if out.pop("main"):
            print(json.dumps(out))
        return 0
    except GanforgeError as e:
        if os.environ.get("GANFORGE_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (Ctrl-C); run it again with --resume", file=sys.stderr)
        return 130
    except stop.Stopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{PROG} {args.command}: {e}; run it again with --resume to continue", file=sys.stderr)
        return e.exit_status


if __name__ == "__main__":
    sys.exit(main())
