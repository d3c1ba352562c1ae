"""``python -m pipelines run|compile|submit|schedule …`` — what the Makefile calls."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ganforge.config import PRESETS, PROFILES
from ganforge.errors import GanforgeError
from ganforge.platform import run_knobs

from .overrides import add_set_argument
from .remote import main_schedule, main_submit, main_unschedule


def main_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines run", description="run a pipeline locally (kfp.local)")
    p.add_argument("pipeline", choices=sorted(PRESETS))
    p.add_argument("--profile", default="local", choices=sorted(PROFILES))
    run_knobs.add_options(p)
    p.add_argument(
        "--runner",
        default="subprocess",
        help="subprocess (tasks in this venv) or docker (each task in a localhost/ganforge-cpu:dev "
        "container, tracking in the local MLflow + PostgreSQL + S3 stack)",
    )
    add_set_argument(p)
    a = p.parse_args(argv)
    # run_local checks the --set values with the knobs when it settles the run's config, before any work.
    overrides = json.dumps(a.set) if a.set else None
    if a.runner == "docker":
        from .docker_local import CPU_IMAGE

        # Before anything imports the components: their base_image is fixed at import time.
        os.environ["GANFORGE_IMAGE"] = CPU_IMAGE
    from .local import check_runner, print_summary, run_local

    check_runner(a.runner)

    summary = run_local(
        a.pipeline,
        a.profile,
        runner=a.runner,
        overrides=overrides,
        **run_knobs.option_values(a),
    )
    print_summary(summary)
    return 0


def main_compile(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines compile", description="compile to KFP IR YAML")
    p.add_argument("pipeline", choices=sorted(PRESETS) + ["all"])
    p.add_argument("--profile", default="full", choices=sorted(PROFILES), help="default profile parameter")
    p.add_argument("--out-dir", default="build")
    a = p.parse_args(argv)
    from .compile import compile_pipeline

    for name in sorted(PRESETS) if a.pipeline == "all" else [a.pipeline]:
        print(compile_pipeline(name, f"{a.out_dir}/{name}.yaml", a.profile))
    return 0


def main_images_local(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipelines images-local",
        description="build the cpu and mlflow-server images on a local Debian base",
    )
    p.add_argument("--target", action="append", dest="targets", help="cpu or mlflow-server (default: both)")
    a = p.parse_args(argv)
    from .docker_local import build_images

    report = build_images(tuple(a.targets or ("cpu", "mlflow-server")), log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(report, indent=2))
    return 0


def main_stack(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipelines stack",
        description="the local MLflow server image + PostgreSQL + S3 stack of GANFORGE_HOME",
    )
    p.add_argument("action", choices=["up", "down", "status", "env"])
    a = p.parse_args(argv)
    from . import stack

    if a.action == "up":
        print(stack.up(log=lambda m: print(m, file=sys.stderr)).tracking_uri)
    elif a.action == "down":
        stack.down(log=lambda m: print(m, file=sys.stderr))
    else:
        running = stack.running()
        if a.action == "env":  # for `env $(python -m pipelines stack env) CMD`: nothing when no stack runs
            print(" ".join(f"{k}={v}" for k, v in running.env().items()) if running else "")
        elif running is None:
            print("no local stack running", file=sys.stderr)
            return 1
        else:
            print(json.dumps(running.__dict__, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "run": main_run,
        "compile": main_compile,
        "images-local": main_images_local,
        "stack": main_stack,
        "submit": main_submit,
        "schedule": main_schedule,
        "unschedule": main_unschedule,
    }
    if not argv or argv[0] not in commands:
        print(f"usage: python -m pipelines {{{','.join(commands)}}} …", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except GanforgeError as e:  # a problem the message explains; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
