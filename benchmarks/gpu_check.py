"""`make gpu-check`: the GPU path end to end on one machine, one table, build/gpu-check.json.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--quality] [--parts presets,bench,fid]
                                   [--idx DIR] [--out build/gpu-check.json] [--budget 540]

Parts, each within its own share of the budget (a part, or a command in it, that would run past it is
cut and reported as such):

- presets: every image preset trains a few hundred steps at the ``full`` profile through the core CLI
  (``python -m ganforge.cli``), is evaluated (FID/KID; cyclegan: its translation scores) and generates
  (cyclegan: translates) from its checkpoint, on the device.
- bench: ganforge's training loop (``train()``) against a pytorch/examples-style loop at the examples'
  configuration (64², batch 64, nz 100, ngf = ndf = 64), bf16 against fp32, batch 512 against 64, compile
  against eager; every ratio from one run. The fraction of the GPU's bf16 peak at the ``full`` profile's
  batch (FLOPs counted by torch.utils.flop_counter, the peak from the device name).
- fid: Inception features img/s on the device in fp32, their largest difference from the CPU TorchScript
  reference, and FID-10k end to end (``ganforge evaluate --n 10000``) with the real statistics cached.
- quality (``--quality``, not in the 9 minutes): dcgan at ``full`` trained ~7 minutes, its FID-10k.

What it needs beside the checkout: the core's Python packages (torch, torchvision, numpy, scipy, pillow,
tqdm, filelock) and torch-fidelity (pure Python: ``--pylib`` puts a copied package on the path), the
Fashion-MNIST IDX files (``--idx``) and the Inception TorchScript (``GANFORGE_INCEPTION_WEIGHTS``). No
network, no MLflow: registering is the platform layer's and is reported as skipped without it.

``--smoke`` (with ``--device cpu``): the same commands at the ``tiny`` profile, 2 steps, a few images —
what tests/test_gpu_check.py runs so that this command cannot rot on a machine without a GPU.

The parts live in gpu_check_run, gpu_check_parts, gpu_check_bench and gpu_check_bundle beside this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from gpu_check_bench import check_bench  # noqa: E402
from gpu_check_bundle import join_bundle, make_bundle  # noqa: E402
from gpu_check_parts import IMAGE_PRESETS, QUALITY_SECONDS, check_fid, check_presets, check_quality  # noqa: E402
from gpu_check_run import Budget, Report, prepare_data  # noqa: E402

from ganforge.fileio import atomic_write_text  # noqa: E402

PART_SHARES = {"presets": 0.7, "bench": 0.2, "fid": 0.1}
"""Each part's share of --budget (seconds), in this order; what a part leaves unused goes to the next. The
presets part gets most: each preset runs three CLI commands, each paying a process start-up (docs/gpu.md)."""


DEFAULT_IDX = "/usr/share/datasets/fashion-mnist"


def environment(args) -> dict:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "device": args.device}
    if args.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny profile, 2 steps, a few images: checks the machinery")
    p.add_argument("--parts", default="presets,bench,fid", help="comma-separated: presets, bench, fid")
    p.add_argument("--presets", default=",".join(IMAGE_PRESETS), help="the presets part's presets")
    p.add_argument("--steps", type=int, default=200, help="training steps per preset (presets part)")
    p.add_argument("--quality", action="store_true", help=f"also the quality row (~{QUALITY_SECONDS} s a seed)")
    p.add_argument("--quality-seeds", default="0", help="comma-separated seeds for the quality row")
    p.add_argument("--idx", type=Path, default=Path(os.environ.get("GANFORGE_FASHION_IDX", DEFAULT_IDX)))
    p.add_argument("--pylib", type=Path, help="a folder of extra pure-Python packages (torch_fidelity) to import")
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "gpu-check-work")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-check.json")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for presets + bench + fid (default 9 min)")
    p.add_argument("--bundle", type=Path, nargs="+", help="folders from `make gpu-bundle`, carried here: joined first")
    p.add_argument("--make-bundle", type=Path, help="write the carry folders (1/, 2/, 3/) here and stop")
    args = p.parse_args(argv)
    if args.make_bundle:
        from ganforge.weights import inception_weights_path

        for d in make_bundle(args.make_bundle, inception_weights_path(), args.idx):
            print(f"{d}: {sum(f.stat().st_size for f in d.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
        return 0
    if args.bundle:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        weights_file, args.idx, pylib = join_bundle(args.bundle, args.work_dir)
        os.environ["GANFORGE_INCEPTION_WEIGHTS"] = str(weights_file)
        args.pylib = args.pylib or pylib
    args.presets = [s for s in args.presets.split(",") if s]
    args.quality_seeds = [int(s) for s in args.quality_seeds.split(",") if s]
    parts = [s for s in args.parts.split(",") if s]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a GPU machine, or --device cpu --smoke", file=sys.stderr)
        return 2
    if not args.idx.is_dir():
        print(f"gpu-check: --idx {args.idx} is not a folder of Fashion-MNIST IDX files (see README)", file=sys.stderr)
        return 2
    if args.pylib:
        sys.path.insert(0, str(args.pylib.resolve()))
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    pythonpath = [str(ROOT / "src"), *([str(args.pylib.resolve())] if args.pylib else [])]
    from ganforge.weights import WEIGHTS_ENV, inception_weights_path

    weights = os.environ.get(WEIGHTS_ENV) or str(inception_weights_path())  # before the cache moves
    env = {
        **os.environ,
        WEIGHTS_ENV: weights,
        "GANFORGE_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "GANFORGE_HOME": str(work / "home"),
        "GANFORGE_PROGRESS": "0",
        **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}),
    }
    for key in ("GANFORGE_HOME", "GANFORGE_CACHE", WEIGHTS_ENV):
        os.environ[key] = env[key]
    report, started = Report(), time.monotonic()
    total = Budget(args.budget)
    results: dict = {"environment": environment(args), "smoke": args.smoke}
    try:
        data = prepare_data(work, args.idx, env, "tiny" if args.smoke else "full", total, report)
    except RuntimeError as e:
        results["error"] = str(e)
        data = None
    runs: dict = {}
    for part in ("presets", "bench", "fid"):
        if data is None or part not in parts:
            continue
        share = total.left() * PART_SHARES[part] / sum(PART_SHARES[q] for q in parts if q in PART_SHARES)
        budget = Budget(share if part != "fid" else total.left())
        try:
            if part == "presets":
                runs = results["presets"] = check_presets(args, work, data, env, budget, report)
            elif part == "bench":
                results["bench"] = check_bench(args, work, data, budget, report)
            else:
                results["fid"] = check_fid(args, work, data, runs, env, budget, report)
        except Exception as e:  # recorded; the other parts still run
            report.add(part, "part", "fail", f"{type(e).__name__}: {str(e)[:160]}")
    if args.quality and data is not None:
        results["quality"] = check_quality(args, work, data, env, report, results.get("bench", {}))
    results["rows"] = report.rows
    results["seconds"] = round(time.monotonic() - started, 1)
    results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(args.out, json.dumps(results, indent=2, default=str) + "\n")
    print(report.table())
    print(f"gpu-check: {results['seconds']:.0f} s (budget {args.budget:.0f} s); report: {args.out}")
    return 1 if any(r["status"] in ("fail", "cut") for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
