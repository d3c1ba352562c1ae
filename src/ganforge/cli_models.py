"""The commands that read a trained model: ``generate``, ``translate``, ``edit``, ``evaluate``, ``curve``.

``evaluate --run`` and ``curve`` of a run trained with ``--mlflow`` log their scores into that run's
MLflow run (``ganforge.cli_train.recorded_mlflow_run``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_train import recorded_mlflow_run
from .config import ConfigError
from .errors import require_platform
from .fileio import is_s3

DEVICES = ("auto", "cpu", "cuda")


def _device(choice: str) -> str:
    """``--device``: auto is CUDA when this machine has it, else the CPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no usable CUDA device; use --device cpu (or auto)")
    return choice


def add_device_arg(p: argparse.ArgumentParser) -> None:
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
    if run_id := recorded_mlflow_run(run):  # trained with --mlflow: the scores and the curve join its MLflow run
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
    grid (``ganforge.translate.evaluate_translation``) and the FID curve over its snapshots (unless --no-curve),
    logged to the run's MLflow run as the DAG's step does."""
    from .checkpoint import checkpoint_file
    from .curve import evaluate_translation_run
    from .paths import cache_dir

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
    metrics = evaluate_translation_run(path, args.data, args.data_b, out, cache_dir(), n=args.n, curve=args.curve)
    run_id = recorded_mlflow_run(path) if path.is_dir() else None
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
        reference_b=args.data_b,
    )
    plot_curve(rows, run / CURVE_PNG)
    out = {"csv": str(run / CURVE_CSV), "png": str(run / CURVE_PNG), "points": len(rows)}
    if (run_id := recorded_mlflow_run(run)) and rows:  # trained with --mlflow: the curve joins its MLflow run
        steps = require_platform("steps", f"logging to the MLflow run of {run} (trained with --mlflow)")
        out["mlflow_run_id"] = run_id
        steps.log_curve(run_id, rows, run)
    print(json.dumps(out))
    return 0
