"""``ganforge prep`` and ``ganforge train``: a dataset directory, then a run directory trained on it.

``train`` runs in this process, relaunches itself under torchrun for ``--nproc N`` (ranks on this node),
stages ``s3://`` data and output through ``cluster_train`` (cluster job pods), and with ``--mlflow``
opens an MLflow run of its own whose id the run directory keeps (``MLFLOW_RUN_FILE``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .cli_config import check_local_ranks, config_from_args, under_torchrun
from .config import ConfigError, PipelineConfig
from .errors import require_platform
from .fileio import atomic_write_text, is_s3
from .launch import torchrun_command


def cmd_prep(args) -> int:
    from .data import prepare

    cfg = config_from_args(args)
    data_cfg = cfg.data if not args.source else type(cfg.data)(**{**cfg.data.__dict__, "source": args.source})
    if args.domain:  # cyclegan: one of the two domains (a class of the source, or data.source_b's folder)
        from .cyclegan import prepare_domain

        manifest = prepare_domain(data_cfg, args.domain, args.out, split=args.split or data_cfg.split)
    elif data_cfg.task:  # pix2pix: (degraded input, target) pairs of the source
        from .edit_data import prepare_paired

        manifest = prepare_paired(data_cfg, args.out, split=args.split)
    else:
        manifest = prepare(data_cfg, args.out, split=args.split)
    print(json.dumps({k: manifest[k] for k in ("source", "split", "count", "shape", "sha256")}, indent=2))
    return 0


def _relaunch_under_torchrun(cfg: PipelineConfig, args) -> int:
    """This training command again under torchrun, one process per rank on this node.

    The ranks get the settled config (rank count included) as a config.json, not this argv:
    torchrun's parser pre-scans the forwarded arguments for abbreviations of its own options and
    rejects ``--nproc`` as ambiguous (Python 3.11).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ganforge-ranks-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(cfg.to_json())
        cmd = torchrun_command(
            cfg.train.nproc,
            [
                "train",
                "--config-json",
                str(config_path),
                "--data",
                args.data,
                *(["--data-b", args.data_b] if getattr(args, "data_b", None) else []),
                "--out",
                args.out,
                *(["--resume"] if args.resume else []),
                *(["--mlflow"] if args.mlflow else []),
                *(["--allow-config-change"] if getattr(args, "allow_config_change", False) else []),
                *(["--allow-data-change"] if getattr(args, "allow_data_change", False) else []),
            ],
        )
        from . import stop, threads

        # SIGTERM/SIGINT sent to this process go to the ranks' launcher, which passes them on: the ranks stop
        # at one step with a checkpoint, and this process exits with the launcher's status once they have.
        with subprocess.Popen(cmd, env=threads.env_for_ranks(cfg.train.nproc)) as launcher, stop.forwarding(launcher):
            status = launcher.wait()
        return 128 - status if status < 0 else status


def cmd_train(args) -> int:
    """Train on a dataset directory or ``s3://`` prefix into a run directory or ``s3://`` prefix."""
    cfg = config_from_args(args)
    with _run_directory(args):
        return _train_command(cfg, args)


@contextlib.contextmanager
def _run_directory(args) -> Iterator[None]:
    """A local --out checked (``fileio.check_run_dir``) and locked for one writer (``ganforge.runlock``)
    by the process that leads the run: this one, or rank 0 under a launcher that holds no lock. An
    ``s3://`` --out is staged by each pod into its own folder (``cluster_train``) and is not locked."""
    if is_s3(args.out) or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    from .checkpoint import is_run_dir
    from .fileio import check_run_dir
    from .runlock import LOCK_NAME, run_lock

    inputs = [d for d in (args.data, args.data_b) if d and not is_s3(d)]
    check_run_dir(
        args.out,
        command="ganforge train",
        inputs=inputs,
        is_run=is_run_dir,
        housekeeping=(LOCK_NAME, MLFLOW_RUN_FILE),
    )
    with run_lock(args.out):
        yield


def _train_command(cfg: PipelineConfig, args) -> int:
    """``train`` inside its locked run directory."""
    if cfg.model.arch == "cyclegan":
        _check_domains(args)
    world = cfg.train.nproc * cfg.train.nnodes
    if not under_torchrun():  # train.nproc from a config.json or --set
        check_local_ranks(cfg.train.nproc, "train.nproc=")
    if world > 1 and not under_torchrun():
        if cfg.train.nnodes > 1:
            raise ConfigError(
                f"train.nnodes={cfg.train.nnodes}: start one `torchrun --nnodes {cfg.train.nnodes} "
                "--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m ganforge.cli train …` per node "
                "(the cluster launchers do this), or train on one node with --nproc"
            )
        return _relaunch_under_torchrun(cfg, args)
    is_main = int(os.environ.get("RANK", "0")) == 0
    own_run = args.mlflow and is_main  # a pipeline's ranks join its run through ganforge.platform.worker
    if own_run and is_s3(args.out):
        raise ConfigError(
            "--mlflow keeps the MLflow run id in the run directory: use a local --out "
            "(cluster runs are tracked by the pipeline)"
        )
    with _cli_mlflow_run(cfg, Path(args.out), args.resume) if own_run else contextlib.nullcontext() as run_id:
        result, checkpoint = _train_logged(cfg, args, run_id if is_main else None)
    if is_main:
        print(
            json.dumps(
                {
                    "step": result.step,
                    "epoch": result.epoch,
                    "seconds": round(result.seconds, 2),
                    "total_seconds": round(result.total_seconds, 2),
                    "img_per_s": round(result.img_per_s, 1),
                    "checkpoint": checkpoint,
                }
            )
        )
    return 0


def _train_logged(cfg: PipelineConfig, args, run_id: str | None):
    """``train``'s body; with ``run_id`` (rank 0 of a tracked run) the losses go to that MLflow run."""
    callback = None
    if run_id:
        tracking = require_platform("tracking", "train --mlflow")
        tracking.configure()
        callback = tracking.MlflowMetricsCallback(run_id)
    with _flushed_when_stopped(callback):
        result, checkpoint = _train_to(cfg, args, callback)
    if callback is not None:
        callback.flush()
        if args.mlflow:
            tracking.log_metrics(
                run_id, {"train_wall_s": result.total_seconds, "train_epochs": result.epoch}, step=result.step
            )
    return result, checkpoint


@contextlib.contextmanager
def _flushed_when_stopped(callback) -> Iterator[None]:
    """A training stopped by a signal still sends its buffered curve points to MLflow, up to its last step."""
    from .stop import Stopped

    try:
        yield
    except Stopped:
        if callback is not None:
            callback.flush()
        raise


def _train_to(cfg: PipelineConfig, args, callback):
    """``train`` into a local or ``s3://`` --out: (result, where its checkpoint is)."""
    from .train import train

    if is_s3(args.data) or is_s3(args.out):
        # Cluster job pods: stage s3:// data and output locally, push checkpoints back (cluster_train).
        cluster_train = require_platform("cluster_train", "train with an s3:// --data or --out")
        result = cluster_train.train_staged(
            cfg,
            args.data,
            args.out,
            resume=args.resume,
            on_metrics=callback,
            allow_config_change=args.allow_config_change,
            allow_data_change=args.allow_data_change,
        )
        checkpoint = (
            str(result.checkpoint) if not is_s3(args.out) else f"{args.out.rstrip('/')}/{result.checkpoint.name}"
        )
    else:
        result = train(
            cfg,
            (args.data, args.data_b) if cfg.model.arch == "cyclegan" else args.data,
            args.out,
            resume=args.resume,
            on_metrics=callback,
            allow_config_change=args.allow_config_change,
            allow_data_change=args.allow_data_change,
        )
        checkpoint = str(result.checkpoint)
    return result, checkpoint


def _check_domains(args) -> None:
    """The cyclegan preset trains on two local domains: --data (A) and --data-b (B)."""
    if not args.data_b:
        raise ConfigError("the cyclegan preset trains on two domains: pass --data DOMAIN_A_DIR --data-b DOMAIN_B_DIR")
    if is_s3(args.data) or is_s3(args.data_b) or is_s3(args.out):
        raise ConfigError("the cyclegan preset trains on local directories: --data, --data-b and --out cannot be s3://")


MLFLOW_RUN_FILE = "mlflow_run_id"


def recorded_mlflow_run(run: Path) -> str | None:
    """The MLflow run id a ``train --mlflow`` run directory recorded, or None."""
    id_file = run / MLFLOW_RUN_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


@contextlib.contextmanager
def _cli_mlflow_run(cfg: PipelineConfig, out: Path, resume: bool) -> Iterator[str]:
    """The MLflow run of a CLI training run, open while the block trains: created here (its id kept in
    OUT/mlflow_run_id) or, on --resume, the recorded one marked RUNNING again; closed on the way out —
    FINISHED when training returns, KILLED on Ctrl-C or SIGTERM, FAILED on an error. Later ``evaluate``/``curve``
    calls still log into the closed run by its id."""
    tracking = require_platform("tracking", "train --mlflow")
    tracking.configure()
    if resume and (recorded := recorded_mlflow_run(out)):
        run_id = recorded
        tracking.reopen_pipeline_run(run_id)
    else:
        run_id = tracking.start_pipeline_run(cfg, tags={"ganforge.launched_by": "cli"})
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MLFLOW_RUN_FILE, run_id + "\n")
    try:
        yield run_id
    except BaseException as e:
        from .stop import Stopped

        status = "KILLED" if isinstance(e, (KeyboardInterrupt, Stopped)) else "FAILED"
        try:
            tracking.finish_pipeline_run(run_id, status)
        except Exception as mark_error:  # the training error matters more than its record: never hide it
            print(f"ganforge: could not mark MLflow run {run_id} {status}: {mark_error}", file=sys.stderr)
        raise
    tracking.finish_pipeline_run(run_id, "FINISHED")
