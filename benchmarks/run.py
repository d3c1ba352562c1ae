"""ganforge's benchmarks: speed ratios measured in one run, a table on stdout, build/bench.json.

    python benchmarks/run.py [--out build/bench.json] [--quick] [--only NAME,NAME…]

Both sides of every ratio are measured in the same run, alternated, after a warm-up, so the
ratio survives a busy machine better than either absolute number. A MISS is a finding, not a
failure: the command exits non-zero only when a benchmark could not be measured.

The metrics and efforts live in bench_spec.py, the group runners in bench_groups.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules: bench_*, gpu_check

import bench_train  # noqa: E402
from bench_groups import GROUP_RUNNERS  # noqa: E402
from bench_spec import FULL, GROUP_ORDER, METRICS, QUICK, RENAMED, Effort  # noqa: E402

from ganforge import threads  # noqa: E402
from ganforge.fileio import atomic_write_text  # noqa: E402

SCHEMA_VERSION = 1


def machine_info() -> dict:
    """What the numbers were measured on."""
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def status_of(value: float, target: float | None) -> str:
    """PASS/MISS against a ``>=`` target; REPORT for numbers that have no target."""
    if target is None:
        return "REPORT"
    return "PASS" if value >= target else "MISS"


def metric_entry(name: str, value: float) -> dict:
    m = METRICS[name]
    return {
        "value": value,
        "unit": m.unit,
        "target": None if m.target is None else {"op": ">=", "value": m.target},
        "status": status_of(value, m.target),
        "group": m.group,
        "what": m.what,
    }


def collect(group: str, raw: dict, wanted: set[str]) -> tuple[dict, dict]:
    """(wanted metrics, the group's other numbers) from a benchmark's values; non-finite values are errors."""
    values = {RENAMED.get(k, k): v for k, v in raw["values"].items()}
    metrics, extra = {}, {}
    for name, value in values.items():
        if name in wanted:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} came out as {value!r}, not a positive finite number")
            metrics[name] = metric_entry(name, float(value))
        else:
            extra[name] = value
    missing = sorted(n for n in wanted if METRICS[n].group == group and n not in metrics)
    if missing:
        raise ValueError(f"benchmark group {group!r} did not produce {', '.join(missing)}")
    return metrics, extra


def format_table(metrics: dict) -> str:
    rows = [("metric", "value", "target", "status")]
    for name, e in metrics.items():
        target = f">= {e['target']['value']:g}" if e["target"] else "-"
        rows.append((name, f"{e['value']:.3g} {e['unit']}", target, e["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_details(details: dict) -> str:
    """Where the training step's time goes and the thread-policy cases, when those groups ran."""
    parts = []
    if "threads" in details:
        import bench_threads

        parts.append(bench_threads.format_threads(details["threads"]))
    if details.get("train", {}).get("profile"):
        parts.append(bench_train.format_profile(details["train"]))
    ceiling = details.get("inception", {}).get("other_values", {}).get("inception_ceiling")
    if ceiling:
        parts.append(
            f"Inception (FID features): {ceiling['gflop_per_img']:.2f} GFLOP per 299² image (counted); "
            f"fp32 peak {ceiling['peak']['how']}\n"
            f"  → at most {ceiling['img_per_s_at_peak']:.1f} img/s at 100 % of peak; "
            f"{ceiling['runtime']} ran {ceiling['img_per_s']:.1f} img/s = "
            f"{ceiling['img_per_s'] * ceiling['gflop_per_img'] / ceiling['peak']['gflop_per_s']:.0%} of peak"
        )
    return "\n".join(parts)


def parse_only(text: str | None) -> list[str]:
    """--only NAME,NAME… → metric names in report order; argparse error naming the valid ones."""
    if not text:
        return list(METRICS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return [n for n in METRICS if n in names]


def run_benchmarks(names: list[str], effort: Effort, work: Path) -> dict:
    """Measure every group the requested metrics need; one failing group is recorded and the rest still run."""
    wanted = set(names)
    started = time.time()
    report: dict = {
        "schema_version": SCHEMA_VERSION,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": effort is QUICK,
        "machine": machine_info(),
        "load_average": {"before": list(os.getloadavg())},
        "metrics": {},
        "details": {},
        "errors": {},
    }
    for group in GROUP_ORDER:
        if not any(METRICS[n].group == group for n in wanted):
            continue
        print(f"[bench] {group} …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            raw = GROUP_RUNNERS[group](work, effort, wanted)
            metrics, extra = collect(group, raw, wanted)
        except Exception as e:  # recorded and reported: the command then exits non-zero
            report["errors"][group] = f"{type(e).__name__}: {e}"
            continue
        report["metrics"].update(metrics)
        report["details"][group] = {
            **{k: v for k, v in raw.items() if k != "values"},
            "other_values": extra,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    report["metrics"] = {n: report["metrics"][n] for n in METRICS if n in report["metrics"]}
    report["load_average"]["after"] = list(os.getloadavg())
    report["seconds"] = round(time.time() - started, 1)
    return report


def gpu_section(out: Path, quick: bool) -> dict:
    """The GPU bench (benchmarks/gpu_check.py: dcgan at full, the bench and FID parts) when CUDA is here, its
    report beside ``out``; otherwise skipped, with the reason printed."""
    if not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False); on a GPU machine: make gpu-check"
        print(f"GPU section: skipped — {reason}")
        return {"skipped": reason}
    import gpu_check

    gpu_out = out.with_name(out.stem + "-gpu.json")
    argv = ["--parts", "presets,bench,fid", "--presets", "dcgan", "--out", str(gpu_out)]
    status = gpu_check.main(argv + (["--budget", "240"] if quick else []))
    return {"report": str(gpu_out), "exit_status": status}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/bench.json"), help="JSON report (written atomically)")
    p.add_argument("--quick", action="store_true", help="few steps and images: checks the machinery, not the speed")
    p.add_argument(
        "--only",
        type=parse_only,
        default=list(METRICS),
        metavar="NAME,…",
        help=f"measure only these metrics: {', '.join(METRICS)}",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build/bench_work"),
        help="prepared datasets and scratch runs (reused between runs)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads for the in-process and compile benchmarks "
        "(default: ganforge's thread policy, the free cores); the DDP and threads cases set their own",
    )
    a = p.parse_args(argv)
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads {a.threads} must be >= 1")
        torch.set_num_threads(a.threads)
        policy = f"{a.threads} thread(s) (--threads)"
    else:  # what ganforge's entry points pick on this machine now (the threads group varies it itself)
        policy = threads.configure(verbose=False).describe()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    report = run_benchmarks(a.only, QUICK if a.quick else FULL, a.work_dir)
    report["machine"]["thread_policy"] = policy
    report["gpu"] = gpu_section(a.out, a.quick)
    atomic_write_text(a.out, json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), torch {m['torch_version']}, "
        f"{m['torch_threads']} threads [{policy}]; load average {report['load_average']['before'][0]:.1f} → "
        f"{report['load_average']['after'][0]:.1f}; {report['seconds']:.0f} s{' (quick)' if report['quick'] else ''}"
    )
    print(format_table(report["metrics"]))
    print(format_details(report["details"]))
    for group, error in report["errors"].items():
        print(f"ERROR in {group}: {error}")
    print(f"report: {a.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
