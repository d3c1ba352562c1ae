"""The benchmark groups of ``benchmarks/run.py``: each measures its metrics (train, threads, compile,
ddp, inception, fid) and returns their values and raw rounds."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import bench_train
import torch
from bench_spec import Effort

from ganforge.config import build_config

BENCH_DIR = Path(__file__).resolve().parent


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
