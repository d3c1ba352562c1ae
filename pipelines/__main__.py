"""``python -m pipelines run|compile|submit|schedule …`` — what the Makefile calls."""
from __future__ import annotations

import argparse
import sys

from ganforge.config import PRESETS, PROFILES

from .overrides import add_set_argument, overrides_parameter


def main_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines run", description="run a pipeline locally (kfp.local)")
    p.add_argument("pipeline", choices=sorted(PRESETS))
    p.add_argument("--profile", default="local", choices=sorted(PROFILES))
    p.add_argument("--epochs", type=int)
    p.add_argument("--source", help="data source (default: the preset's)")
    p.add_argument("--nproc", type=int, help="training ranks on this machine (torchrun)")
    p.add_argument("--fid-samples", type=int)
    p.add_argument("--promotion-margin", type=float)
    add_set_argument(p)
    a = p.parse_args(argv)
    overrides = overrides_parameter(a.pipeline, a.profile, a.set)
    from .local import print_summary, run_local

    summary = run_local(a.pipeline, a.profile, epochs=a.epochs, source=a.source, nproc=a.nproc,
                        fid_samples=a.fid_samples, promotion_margin=a.promotion_margin, overrides=overrides)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": main_run, "compile": main_compile}
    try:
        from .remote import main_schedule, main_submit, main_unschedule

        commands.update(submit=main_submit, schedule=main_schedule, unschedule=main_unschedule)
    except ImportError:
        pass
    if not argv or argv[0] not in commands:
        print(f"usage: python -m pipelines {{{','.join(commands)}}} …", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
