"""``ganforge`` command line: prep | train | evaluate | curve | registry | promote | verify-model | serve |
generate | translate.

The pipeline-level commands (run, compile, submit, schedule) live in ``pipelines/`` of the
repository (``python -m pipelines …`` or the Makefile), since they need the checkout.

Each command imports the library modules it uses when it runs, so ``ganforge --help`` and argument
errors answer without loading torch; the platform layer comes in through ``errors.require_platform``
(one line naming ``pip install 'ganforge[platform]'`` when it is not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .config import PRESETS, PROFILES, ConfigError, PipelineConfig, build_config, parse_override
from .errors import GanforgeError, require_platform
from .fileio import atomic_write_text, is_s3
from .launch import AUTO, auto_nproc, check_nproc, torchrun_command, visible_gpus
from .registry_table import format_table


def _config_from_args(args) -> PipelineConfig:
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
        if not _under_torchrun():  # before the config's own checks (batch divisible by ranks) and any process
            _check_local_ranks(nproc)
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


def _check_local_ranks(nproc: int, what: str = "--nproc") -> None:
    from .threads import usable_cores

    check_nproc(nproc, visible_gpus(), usable_cores(), what)


def _nproc_arg(text: str) -> int | str:
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


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="dcgan", choices=sorted(PRESETS), help="named pipeline (default dcgan)")
    p.add_argument("--profile", default="local", choices=sorted(PROFILES), help="compute profile (default local)")
    p.add_argument("--config-json", help="a saved config.json (overrides --preset/--profile)")
    p.add_argument(
        "--set",
        action="append",
        metavar="GROUP.FIELD=VALUE",
        help="override one config field, e.g. --set train.epochs=3 (repeatable)",
    )


def cmd_prep(args) -> int:
    from .data import prepare

    cfg = _config_from_args(args)
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


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


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


COMPUTE_COMMANDS = ("train", "evaluate", "curve", "generate", "translate", "edit")


def _configure_threads(args) -> None:
    """The thread policy (``ganforge.threads``), decided once at entry for the commands that compute:
    the free cores, shared by the ranks on this node (LOCAL_WORLD_SIZE under torchrun)."""
    if args.command in COMPUTE_COMMANDS:
        from . import threads

        threads.configure(processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cmd_train(args) -> int:
    """Train on a dataset directory or ``s3://`` prefix into a run directory or ``s3://`` prefix."""
    cfg = _config_from_args(args)
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
    if not _under_torchrun():  # train.nproc from a config.json or --set
        _check_local_ranks(cfg.train.nproc, "train.nproc=")
    if world > 1 and not _under_torchrun():
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


def cmd_edit(args) -> int:
    from .edit import edit_to_dir, load_editor_model

    G, cfg = load_editor_model(args.model or args.checkpoint, _device(args.device))
    written = edit_to_dir(G, cfg, args.input, args.out)
    print(json.dumps({"task": cfg.data.task, "written": len(written), "out": args.out}))
    return 0


def cmd_translate(args) -> int:
    from .translate import load_direction, translate_to_dir

    G, cfg = load_direction(args.model or args.checkpoint, args.direction, _device(args.device))
    written = translate_to_dir(G, cfg, args.direction, args.input, args.out)
    print(json.dumps({"direction": args.direction, "written": len(written), "out": args.out}))
    return 0


MLFLOW_RUN_FILE = "mlflow_run_id"


def _recorded_mlflow_run(run: Path) -> str | None:
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
    if resume and (recorded := _recorded_mlflow_run(out)):
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


def cmd_evaluate(args) -> int:
    if bool(args.checkpoint) == bool(args.run):
        raise ConfigError(
            "give either --checkpoint FILE (one generator) or --run DIR (a training run: final "
            "evaluation plus the FID curve over its snapshots)"
        )
    if args.run and (args.n_real or args.raw_generator):
        raise ConfigError(
            "--n-real and --raw-generator go with --checkpoint FILE; --run scores the EMA generator "
            "against as many real images as it generates"
        )
    arch = _checkpoint_arch(Path(args.checkpoint or args.run))
    _check_evaluate_out(args, metrics_dir=bool(args.run) or arch in ("cyclegan", "pix2pix"))
    if args.data_b or arch == "cyclegan":
        return _evaluate_translation(args, arch)
    if arch == "pix2pix":  # held-out pairs: PSNR, SSIM, FID of the edits and of the task's plain baseline
        from .edit_metrics import evaluate_editing_run
        from .paths import cache_dir

        if args.n_real or args.raw_generator or args.train_data:
            raise ConfigError("--n-real, --raw-generator and --train-data do not apply to a pix2pix run")
        path = Path(args.checkpoint or args.run)
        out = Path(args.out) if args.out else (path if path.is_dir() else path.parent)
        print(json.dumps(evaluate_editing_run(path, args.data, out, cache_dir(), n=args.n), indent=2))
        return 0
    if args.checkpoint:
        from .evaluate import evaluate_checkpoint

        metrics = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            n=args.n,
            out=args.out,
            n_real=args.n_real,
            ema=not args.raw_generator,
            train_dir=args.train_data,
            workers=args.workers,
        )
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    from .curve import evaluate_run, print_point

    run = Path(args.run)
    metrics, rows = evaluate_run(
        run, args.data, args.out or run, n=args.n, curve=args.curve, train_dir=args.train_data, workers=args.workers
    )
    for row in rows:
        print_point(row)
    if run_id := _recorded_mlflow_run(run):  # trained with --mlflow: the scores and the curve join its MLflow run
        steps = require_platform("steps", f"logging to the MLflow run of {run} (trained with --mlflow)")
        steps.log_evaluation(run_id, metrics, rows, args.out or run)
        metrics["mlflow_run_id"] = run_id
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _check_evaluate_out(args, metrics_dir: bool) -> None:
    """Refuse an ``evaluate --out`` that would overwrite an input (the checkpoint, a dataset folder or a file
    in one), a directory given for the metrics file, or an existing file that is not ganforge's metrics JSON
    (``fileio.check_output_file``). ``metrics_dir``: --out is the folder of metrics.json (--run, cyclegan)."""
    if not args.out:
        return
    from .checkpoint import checkpoint_file
    from .evaluate import is_metrics_json
    from .fileio import check_output_file

    inputs = [p for p in (args.data, args.data_b, args.train_data) if p and not is_s3(p)]
    inputs.append(checkpoint_file(args.checkpoint or args.run))
    target = Path(args.out) / "metrics.json" if metrics_dir else args.out
    check_output_file(target, command="ganforge evaluate", inputs=inputs, is_own=is_metrics_json)


def _checkpoint_arch(path: Path) -> str | None:
    """The model arch of a checkpoint (or of a run directory's checkpoint), None where there is no checkpoint."""
    from .checkpoint import checkpoint_file, read_checkpoint

    ckpt = checkpoint_file(path)
    return read_checkpoint(ckpt)["config"]["model"]["arch"] if ckpt.is_file() else None


def _evaluate_translation(args, arch: str | None) -> int:
    """``evaluate`` of a cyclegan run: FID A→B vs held-out B and B→A vs held-out A, their mean, cycle L1, the
    grid (``ganforge.translate.evaluate_translation``), logged to the run's MLflow run as the DAG's step does."""
    from .checkpoint import checkpoint_file
    from .paths import cache_dir
    from .translate import evaluate_translation_run

    path = Path(args.checkpoint or args.run)
    if arch != "cyclegan":
        raise ConfigError(
            f"--data-b goes with a cyclegan run (two domains); {path} is not one: drop --data-b"
            if arch
            else f"no checkpoint at {checkpoint_file(path)}: pass --run RUN_DIR "
            "(or --checkpoint FILE) written by `ganforge train`"
        )
    if not args.data_b:
        raise ConfigError(
            f"{path} is a cyclegan run, scored on both held-out domains: pass --data A_TEST_DIR --data-b B_TEST_DIR "
            "(each from `ganforge prep --preset cyclegan --domain a|b --split test`)"
        )
    if args.n_real or args.raw_generator or args.train_data:
        raise ConfigError("--n-real, --raw-generator and --train-data do not apply to a cyclegan run")
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent)
    metrics = evaluate_translation_run(path, args.data, args.data_b, out, cache_dir(), n=args.n)
    run_id = _recorded_mlflow_run(path) if path.is_dir() else None
    if run_id:  # trained with --mlflow: the scores and the grid join its MLflow run
        steps = require_platform("steps", f"logging to the MLflow run of {path} (trained with --mlflow)")
        steps.log_translation_evaluation(run_id, metrics, out)
        metrics["mlflow_run_id"] = run_id
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def cmd_curve(args) -> int:
    from .curve import CURVE_CSV, CURVE_PNG, fid_curve, plot_curve, print_point

    run = Path(args.run)
    rows = fid_curve(
        run,
        args.data,
        n=args.n,
        n_real=args.n_real,
        follow=args.follow,
        train_data_dir=args.train_data,
        max_epoch=args.max_epoch,
        on_point=print_point,
        workers=args.workers,
    )
    plot_curve(rows, run / CURVE_PNG)
    out = {"csv": str(run / CURVE_CSV), "png": str(run / CURVE_PNG), "points": len(rows)}
    if (run_id := _recorded_mlflow_run(run)) and rows:  # trained with --mlflow: the curve joins its MLflow run
        steps = require_platform("steps", f"logging to the MLflow run of {run} (trained with --mlflow)")
        out["mlflow_run_id"] = run_id
        steps.log_curve(run_id, rows, run)
    print(json.dumps(out))
    return 0


def cmd_registry(args) -> int:
    registry = require_platform("registry", "ganforge registry")
    tracking = require_platform("tracking", "ganforge registry")
    tracking.configure()
    print(format_table(registry.show(args.name)))
    return 0


def cmd_promote(args) -> int:
    registry = require_platform("registry", "ganforge promote")
    tracking = require_platform("tracking", "ganforge promote")
    tracking.configure()
    print(json.dumps(registry.promote_manual(args.name, args.version, force=args.force), indent=2, default=str))
    return 0


def cmd_verify_model(args) -> int:
    registry = require_platform("registry", "ganforge verify-model")
    print(json.dumps(registry.save_verified(args.model, args.out), indent=2))
    return 0


def cmd_serve(args) -> int:
    serving = require_platform("serving", "ganforge serve")
    from .stop import Stopped

    try:
        return serving.serve(args.model, host=args.host, port=args.port, workers=args.workers)
    except (Stopped, KeyboardInterrupt) as e:  # a server's normal end: not "run the command again"
        what = str(e) if isinstance(e, Stopped) else "interrupted (Ctrl-C)"
        print(f"ganforge serve: {what}; the server is stopped and its model copy removed", file=sys.stderr)
        return e.exit_status if isinstance(e, Stopped) else 130


DEVICES = ("auto", "cpu", "cuda")


def _device(choice: str) -> str:
    """``--device``: auto is CUDA when this machine has it, else the CPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no usable CUDA device; use --device cpu (or auto)")
    return choice


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the generator runs (auto: CUDA if any)")


def cmd_generate(args) -> int:
    from .generate import generate_to_dir

    written = generate_to_dir(
        args.model,
        args.out,
        n=args.n,
        seed=args.seed,
        interpolate=args.interpolate,
        class_=args.class_,
        per_class=args.per_class,
        truncation=args.truncation,
        mix_seed=args.mix_seed,
        mix_layers=args.mix_layers,
        device=_device(args.device),
    )
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prep", help="prepare a dataset directory (data.npy + manifest.json)")
    _add_config_args(p)
    p.add_argument("--source", help="IDX dir, image folder, WAV folder, torchvision:NAME, espeak:sc09 or s3://")
    p.add_argument("--split", choices=["train", "test"], help="default: the config's data.split")
    p.add_argument("--out", required=True)
    p.add_argument("--domain", choices=["a", "b"], help="cyclegan: prepare domain A or B (data.class_a/b, source_b)")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("train", help="train a GAN on a prepared dataset")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="dataset directory from `ganforge prep`, or its s3:// copy")
    p.add_argument("--out", required=True, help="run directory or s3:// prefix: checkpoint.pt, config.json, samples/")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--data-b", help="cyclegan: domain B's dataset directory (--data is domain A's)")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="--resume with a config that differs from the checkpoint's beyond epochs/max_steps/cadences/"
        "ranks: go on with the new values (learning rates and betas included) instead of refusing",
    )
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="--resume on a dataset other than the checkpoint's (its manifest sha256 differs): go on with "
        "the new data instead of refusing",
    )
    p.add_argument(
        "--nproc",
        type=_nproc_arg,
        help="ranks on this machine (torchrun), at most one per GPU (or CPU core without one); "
        "auto: one per visible GPU, else 1; default from the config",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="log params and training curves to an MLflow run (GANFORGE_HOME or MLFLOW_TRACKING_URI); "
        "--resume continues the same run",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="FID/KID of a checkpoint's EMA generator (or of a run, with its FID curve)")
    p.add_argument("--checkpoint", help="one checkpoint.pt (or snapshot) to score")
    p.add_argument(
        "--run",
        help="a training run directory: score checkpoint.pt, add the FID curve over "
        "snapshots/, log both to the run's MLflow run if it was trained with --mlflow",
    )
    p.add_argument("--data", required=True, help="reference dataset directory (cyclegan: domain A's held-out split)")
    p.add_argument("--data-b", help="cyclegan: domain B's held-out split (--data is domain A's)")
    p.add_argument(
        "--train-data",
        help="class-conditional models: the training split, for the class accuracy of "
        "the samples (a classifier trained on it once, cached)",
    )
    p.add_argument("--n", type=int, help="samples (default: the config's eval.n_samples)")
    p.add_argument(
        "--out",
        help="--checkpoint: write metrics.json here; --run: directory for metrics.json and "
        "fid_curve.{csv,png} (default: the run directory)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="CPU processes for Inception features (default GANFORGE_EVAL_WORKERS "
        "or 1; on a small CPU, one per core beats threads)",
    )
    p.add_argument(
        "--n-real",
        type=int,
        help="--checkpoint: real reference images (default: --n), e.g. --n 2000 "
        "--n-real 10000 for an FID-2k point comparable with the curve's",
    )
    p.add_argument(
        "--raw-generator",
        action="store_true",
        help="--checkpoint: score the raw generator instead of its EMA (a training checkpoint.pt has both)",
    )
    p.add_argument(
        "--no-curve",
        dest="curve",
        action="store_false",
        help="--run: score only the final model (the curve keeps its CSV's points plus the free one "
        "from the final samples; `ganforge curve --run` adds the rest later)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("curve", help="FID curve over a run's snapshots (resumable; --follow trails a live run)")
    p.add_argument("--run", required=True, help="training run directory (with snapshots/)")
    p.add_argument("--data", required=True, help="reference dataset directory")
    p.add_argument("--n", type=int, help="generated samples per point (default: eval.curve_samples)")
    p.add_argument("--n-real", type=int, help="real reference samples (default: eval.n_samples)")
    p.add_argument("--follow", action="store_true", help="wait for new snapshots until the run's last epoch")
    p.add_argument("--train-data", help="the run's training dataset (needed by --follow to know the last epoch)")
    p.add_argument("--max-epoch", type=int, help="score snapshots up to this epoch only (--follow stops there)")
    p.add_argument("--workers", type=int, help="CPU processes for Inception features (as for evaluate)")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("registry", help="inspect the MLflow model registry")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    show = rsub.add_parser("show", help="versions of a registered model with FID/KID and aliases")
    show.add_argument("name")
    show.set_defaults(func=cmd_registry)

    p = sub.add_parser("promote", help="make a registered version the champion (a human decision)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--force", action="store_true", help="promote even a version without an FID")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "verify-model",
        help="download a registered version once, verify it (sha256 and content) and write that copy to --out",
    )
    p.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--out", required=True, help="folder for the verified model (replaces an earlier verify-model)")
    p.set_defaults(func=cmd_verify_model)

    p = sub.add_parser(
        "serve", help="serve a registered model over HTTP (MLflow's scoring server) from a verified copy"
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=5001, help="TCP port (default 5001)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="samples, grids, interpolations or WAVs from a model")
    _add_device_arg(p)
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint.pt")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpolate", type=int, default=0, metavar="K", help="also write K-step latent interpolations")
    p.add_argument(
        "--class",
        dest="class_",
        metavar="CLASS",
        help="class-conditional models: draw this class (a name such as sneaker, or an id)",
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="class-conditional models: -n samples of every class, one grid row per class",
    )
    p.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        metavar="PSI",
        help="stylegan checkpoints: truncation ψ in [0, 1] (1 = none), pulls w towards its mean",
    )
    p.add_argument(
        "--mix-seed",
        type=int,
        metavar="S",
        help="stylegan checkpoints: also write mixing.png, rows = --seed samples, columns = seed S",
    )
    p.add_argument(
        "--mix-layers",
        choices=("coarse", "middle", "fine"),
        default="coarse",
        help="the styles a mixing.png cell takes from its column's seed (default coarse)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("translate", help="cyclegan: translate images A→B or B→A with a trained run")
    _add_device_arg(p)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a cyclegan run directory or its checkpoint.pt")
    model.add_argument("--model", help="a registered cyclegan model: models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--direction", required=True, choices=["a2b", "b2a"])
    p.add_argument("--input", required=True, help="an image file or a folder of images at the model's size")
    p.add_argument("--out", required=True, help="folder for one PNG per input (existing files are never replaced)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("edit", help="pix2pix: super-resolve or inpaint images with a trained run")
    _add_device_arg(p)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a pix2pix run directory or its checkpoint.pt")
    model.add_argument("--model", help="a registered pix2pix model: models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument(
        "--input",
        required=True,
        help="an image file or folder: sr: images of half the model's side; inpaint: the model's side, alpha < 128 "
        "marking the hole",
    )
    p.add_argument("--out", required=True, help="folder for one PNG per input (existing files are never replaced)")
    p.set_defaults(func=cmd_edit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 2 with one line for a GanforgeError (bad input, config, data,
    checkpoint, storage), 130 for Ctrl-C, 143 for SIGTERM (``ganforge.stop``: training stops at a
    step with a checkpoint; other commands unwind, removing their temporary files); any other
    exception is a bug and keeps its traceback."""
    from . import stop

    args = build_parser().parse_args(argv)
    try:
        with stop.raising_on_sigterm():
            _configure_threads(args)
            return args.func(args)
    except GanforgeError as e:
        # Library errors carry the problem and the fix; a traceback would bury them.
        if os.environ.get("GANFORGE_DEBUG"):
            raise
        print(f"ganforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("GANFORGE_DEBUG"):
            raise
        print(
            f"ganforge {args.command}: interrupted (Ctrl-C); outputs are written to temporary files and renamed "
            "into place, so nothing half-written was left — run the command again"
            + (" with --resume to continue from the last checkpoint" if args.command == "train" else ""),
            file=sys.stderr,
        )
        return 130
    except stop.Stopped as e:
        if os.environ.get("GANFORGE_DEBUG"):
            raise
        if e.step is not None:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"ganforge {args.command}: {e}; run it again with --resume to continue", file=sys.stderr)
        else:
            print(
                f"ganforge {args.command}: {e}; outputs are written to temporary files and renamed into place, "
                "so nothing half-written was left — run the command again"
                + (" with --resume to continue from the last checkpoint" if args.command == "train" else ""),
                file=sys.stderr,
            )
        return e.exit_status


if __name__ == "__main__":
    sys.exit(main())
