"""ganforge's benchmarks: speed ratios measured in one run, a table on stdout, build/bench.json.

    python benchmarks/run.py [--out build/bench.json] [--quick] [--only NAME,NAME…]

Both sides of every ratio are measured in the same run, alternated, after a warm-up, so the
ratio survives a busy machine better than either absolute number. A MISS is a finding, not a
failure: the command exits non-zero only when a benchmark could not be measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # sibling modules: bench_train, bench_metrics

import bench_train  # noqa: E402

from ganforge import threads  # noqa: E402
from ganforge.config import build_config  # noqa: E402
from ganforge.fileio import atomic_write_text  # noqa: E402

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Metric:
    """One reported number: its unit, its target (value must be >= target) and the benchmark that measures it."""

    unit: str
    target: float | None
    group: str
    what: str


METRICS: dict[str, Metric] = {
    "train_img_per_s": Metric(
        "img/s", None, "train", "DCGAN 64² (ngf=ndf=64, batch 64) through ganforge's training step"
    ),
    "train_vs_naive": Metric(
        "ratio", 1.5, "train", "ours / pytorch-examples-style loop (per-item PIL transforms, Sigmoid+BCELoss, NCHW)"
    ),
    "channels_last_effect": Metric("ratio", None, "train", "our step with / without channels_last"),
    "amp_bf16_effect": Metric("ratio", None, "train", "our step with bf16 autocast / fp32"),
    "uint8_in_memory_effect": Metric(
        "ratio", None, "train", "our step fed by in-memory uint8 / by per-item PIL conversion"
    ),
    "train_peak_fraction": Metric(
        "ratio", None, "train", "our step's fp32 FLOP/s / the CPU's fp32 FMA peak at the threads it ran on"
    ),
    "adam_foreach_effect": Metric("ratio", None, "train", "our step with Adam(foreach=True) / the for-loop Adam"),
    "adam_fused_effect": Metric("ratio", None, "train", "our step with Adam(fused=True) / the for-loop Adam"),
    "ema_foreach_effect": Metric("ratio", None, "train", "our step with the EMA as torch._foreach_lerp_ / per tensor"),
    "onednn_effect": Metric("ratio", None, "train", "our step with oneDNN (mkldnn) convolutions / without"),
    "threads_busy_over_idle": Metric(
        "ratio", 0.667, "threads", "default thread policy: img/s with a busy competitor / without (28² DCGAN)"
    ),
    "threads_default_vs_2_busy": Metric(
        "ratio", None, "threads", "with a busy competitor: default policy / 2 threads (torch's default)"
    ),
    "threads_default_vs_1_idle": Metric("ratio", None, "threads", "without the competitor: default policy / 1 thread"),
    "compile_effect": Metric(
        "ratio", None, "compile", "our step torch.compile / eager, after compile warm-up (32² small DCGAN)"
    ),
    "ddp2_vs_1": Metric("ratio", 0.9, "ddp", "train() img/s with 2 gloo ranks / 1 rank, same global batch"),
    "inception_img_per_s": Metric(
        "img/s", 20.0, "inception", "FID Inception features, default extractor (OpenVINO fp32 when installed)"
    ),
    "inception_fast_vs_torchscript": Metric(
        "ratio", None, "inception", "default extractor / optimised TorchScript reference, same batches"
    ),
    "inception_vs_naive": Metric("ratio", None, "inception", "default extractor / naive TorchScript call"),
    "inception_peak_fraction": Metric(
        "ratio",
        None,
        "inception",
        "default extractor's FLOP rate / the cores' fp32 FMA peak (FLOPs counted by torch.utils.flop_counter)",
    ),
    "fid_eval_cached_speedup": Metric("ratio", 1.8, "fid", "FID evaluation time, real statistics computed / cached"),
}
GROUP_ORDER = ("threads", "train", "compile", "ddp", "inception", "fid")
RENAMED = {"inception_speedup": "inception_vs_naive"}
"""bench_metrics' key → the metric name reported here."""


@dataclass(frozen=True)
class Effort:
    """How many steps and images each benchmark spends: the full run, or --quick for tests."""

    train_warmup: int
    train_steps: int
    train_rounds: int
    train_images: int
    threads_warmup: int
    threads_steps: int
    threads_rounds: int
    compile_warmup: int
    compile_steps: int
    compile_rounds: int
    compile_cap_s: int
    ddp_warmup: int
    ddp_steps: int
    ddp_repeats: int
    inception_n: int
    fid_n: int


# One step per round and many rounds: the finer the alternation, the better it cancels other jobs' load.
FULL = Effort(
    train_warmup=2,
    train_steps=1,
    train_rounds=8,
    train_images=bench_train.BENCH_IMAGES,
    threads_warmup=2,
    threads_steps=8,
    threads_rounds=6,
    compile_warmup=3,
    compile_steps=4,
    compile_rounds=8,
    compile_cap_s=420,
    ddp_warmup=4,
    ddp_steps=20,
    ddp_repeats=3,
    inception_n=200,
    fid_n=200,
)
QUICK = Effort(
    train_warmup=1,
    train_steps=1,
    train_rounds=2,
    train_images=128,
    threads_warmup=1,
    threads_steps=1,
    threads_rounds=2,
    compile_warmup=2,
    compile_steps=2,
    compile_rounds=2,
    compile_cap_s=240,
    ddp_warmup=2,
    ddp_steps=4,
    ddp_repeats=1,
    inception_n=20,
    fid_n=50,
)


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


def run_train(work: Path, effort: Effort, wanted: set[str]) -> dict:
    return bench_train.bench_train(
        work,
        wanted,
        warmup=effort.train_warmup,
        steps_per_round=effort.train_steps,
        rounds=effort.train_rounds,
        limit=effort.train_images,
    )


def run_threads(work: Path, effort: Effort, wanted: set[str]) -> dict:
    import bench_threads

    return bench_threads.bench_threads(
        work,
        warmup=effort.threads_warmup,
        steps_per_round=effort.threads_steps,
        rounds=effort.threads_rounds,
        limit=max(effort.train_images, 128),
    )


def run_compile(work: Path, effort: Effort, wanted: set[str]) -> dict:
    """bench_train's compile benchmark in a child process, killed after compile_cap_s."""
    cmd = [
        sys.executable,
        str(BENCH_DIR / "bench_train.py"),
        "compile",
        "--work-dir",
        str(work),
        "--warmup",
        str(effort.compile_warmup),
        "--steps",
        str(effort.compile_steps),
        "--rounds",
        str(effort.compile_rounds),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the thread count this run measures at
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=effort.compile_cap_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"torch.compile benchmark exceeded its {effort.compile_cap_s} s cap "
            "(compilation is slow on a busy 2-core machine); rerun when the machine is quieter"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(f"compile benchmark failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ddp_config_json(nproc: int, effort: Effort) -> str:
    """The local DCGAN profile (28², ngf=ndf=32, global batch 64) for warm-up + timed steps on nproc ranks."""
    cfg = build_config(
        "dcgan",
        "local",
        {
            "data": {"limit": bench_train.BENCH_IMAGES},
            "train": {
                "nproc": nproc,
                "max_steps": effort.ddp_warmup + effort.ddp_steps,
                "log_every": effort.ddp_warmup,
                "checkpoint_every": 10_000,
            },
        },
    )
    return cfg.to_json()


def torchrun_img_per_s(nproc: int, data_dir: Path, scratch: Path, effort: Effort, threads: int | None = None) -> dict:
    """One torchrun launch of ddp_worker_bench.py on nproc ranks; returns rank 0's report.

    threads=None leaves torch's default (every core for 1 rank; ``train()`` splits the cores for N ranks).
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"ddp{nproc}-", dir=scratch))
    config = run_dir / "config.json"
    config.write_text(ddp_config_json(nproc, effort))
    report = run_dir / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(BENCH_DIR / "ddp_worker_bench.py"),
        str(config),
        str(data_dir),
        str(run_dir / "out"),
        str(report),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(
            f"torchrun with {nproc} rank(s) failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}"
        )
    result = json.loads(report.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint and samples are not needed
    return result


DDP_CASES = {"1_rank": (1, None), "2_ranks": (2, None), "1_rank_1_thread": (1, 1)}
"""(ranks, threads per rank): the ratio's two sides, and one rank on one thread, which shows how much of
the ratio is intra-op threading losing to other processes on the shared cores."""


def run_ddp(work: Path, effort: Effort, wanted: set[str]) -> dict:
    """The DDP cases back to back, order reversed every repeat; ratio = median over repeats."""
    data_cfg = build_config("dcgan", "local", {"data": {"limit": bench_train.BENCH_IMAGES}}).data
    data_dir = bench_train.prepared_dataset(data_cfg, work)
    rates: dict[str, list[float]] = {case: [] for case in DDP_CASES}
    threads: dict[str, int] = {}
    for r in range(effort.ddp_repeats):
        for case in list(DDP_CASES) if r % 2 == 0 else reversed(DDP_CASES):
            nproc, n_threads = DDP_CASES[case]
            result = torchrun_img_per_s(nproc, data_dir, work, effort, threads=n_threads)
            rates[case].append(result["img_per_s"])
            threads[case] = result["threads_per_rank"]
    ratio = statistics.median(two / one for one, two in zip(rates["1_rank"], rates["2_ranks"]))
    return {
        "values": {"ddp2_vs_1": ratio, **{f"ddp_{case}_img_per_s": statistics.median(v) for case, v in rates.items()}},
        "img_per_s_per_run": rates,
        "threads_per_rank": threads,
        "setting": {
            "config": "dcgan local profile: 28² × 1 channel, ngf=ndf=32, global batch 64, gloo",
            "warmup_steps": effort.ddp_warmup,
            "timed_steps": effort.ddp_steps,
            "repeats": effort.ddp_repeats,
        },
    }


def run_inception(work: Path, effort: Effort, wanted: set[str]) -> dict:
    import bench_metrics

    return {"values": bench_metrics.bench_inception(n=effort.inception_n)}


def run_fid(work: Path, effort: Effort, wanted: set[str]) -> dict:
    import bench_metrics

    dataset = bench_metrics.prepare_fashion_test(work / f"fashion_test_28px_{effort.fid_n}", effort.fid_n)
    return {"values": bench_metrics.bench_fid_cached(dataset, effort.fid_n)}


GROUP_RUNNERS: dict[str, Callable[[Path, Effort, set[str]], dict]] = {
    "threads": run_threads,
    "train": run_train,
    "compile": run_compile,
    "ddp": run_ddp,
    "inception": run_inception,
    "fid": run_fid,
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
