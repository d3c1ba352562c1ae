"""``ganforge`` command line: prep | train | evaluate | curve | registry | promote | verify-model | serve |
generate | translate | edit.

The pipeline-level commands (run, compile, submit, schedule) live in ``pipelines/`` of the
repository (``python -m pipelines …`` or the Makefile), since they need the checkout.

This module is the entry point: the parser, and one exit status and one line per kind of error. The
commands live by concern in ``cli_train`` (prep, train), ``cli_models`` (generate, translate, edit,
evaluate, curve) and ``cli_registry`` (registry, promote, verify-model, serve); ``cli_config`` settles a
command's config from its arguments. Each command imports the library modules it uses when it runs, so
``ganforge --help`` and argument errors answer without loading torch; the platform layer comes in through
``errors.require_platform`` (one line naming ``pip install 'ganforge[platform]'`` when it is not installed).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_config import add_config_args, nproc_arg
from .cli_config import config_from_args as _config_from_args  # noqa: F401 (importable from the entry too)
from .cli_models import add_device_arg, cmd_curve, cmd_edit, cmd_evaluate, cmd_generate, cmd_translate
from .cli_registry import cmd_promote, cmd_registry, cmd_serve, cmd_verify_model
from .cli_train import MLFLOW_RUN_FILE, cmd_prep, cmd_train
from .errors import GanforgeError

__all__ = ["COMPUTE_COMMANDS", "MLFLOW_RUN_FILE", "build_parser", "main"]

COMPUTE_COMMANDS = ("train", "evaluate", "curve", "generate", "translate", "edit")


def _configure_threads(args) -> None:
    """The thread policy (``ganforge.threads``), decided once at entry for the commands that compute:
    the free cores, shared by the ranks on this node (LOCAL_WORLD_SIZE under torchrun)."""
    if args.command in COMPUTE_COMMANDS:
        from . import threads

        threads.configure(processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prep", help="prepare a dataset directory (data.npy + manifest.json)")
    add_config_args(p)
    p.add_argument("--source", help="IDX dir, image folder, WAV folder, torchvision:NAME, espeak:sc09 or s3://")
    p.add_argument("--split", choices=["train", "test"], help="default: the config's data.split")
    p.add_argument("--out", required=True)
    p.add_argument("--domain", choices=["a", "b"], help="cyclegan: prepare domain A or B (data.class_a/b, source_b)")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("train", help="train a GAN on a prepared dataset")
    add_config_args(p)
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
        type=nproc_arg,
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
    p.add_argument("--data", required=True, help="reference dataset directory (cyclegan: domain A's held-out split)")
    p.add_argument("--data-b", help="cyclegan: domain B's held-out split (--data is domain A's)")
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
    add_device_arg(p)
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
    add_device_arg(p)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a cyclegan run directory or its checkpoint.pt")
    model.add_argument("--model", help="a registered cyclegan model: models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--direction", required=True, choices=["a2b", "b2a"])
    p.add_argument("--input", required=True, help="an image file or a folder of images at the model's size")
    p.add_argument("--out", required=True, help="folder for one PNG per input (existing files are never replaced)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("edit", help="pix2pix: super-resolve or inpaint images with a trained run")
    add_device_arg(p)
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
