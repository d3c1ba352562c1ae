"""The thread policy on a shared machine: training img/s at the default policy vs 1 vs 2 threads, with and
without a competing busy process that this benchmark starts itself.

One process; the contestants are one training step object run at different thread counts
(``torch.set_num_threads`` before each case). Rounds alternate the competitor off/on (the order
reversed every round) and, inside each, the thread settings in ABBA order, so other jobs' load
hits every case alike. "default" asks ``ganforge.threads`` for its plan at that moment, with
GANFORGE_THREADS and OMP_NUM_THREADS unset — it probes the machine as the CLI does at start —
and records the thread count it chose each round.

The model is the local profile's DCGAN (28², ngf = ndf = 32, batch 64): what ``make run``
trains, and with its short ops the case most hurt by a stalled thread.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bench_train
import torch

from ganforge import threads
from ganforge.config import build_config

CASES = ("default", "1", "2")
COMPETITOR = (sys.executable, "-c", "while True: pass")
"""One process keeping one core busy, as another user's single-threaded job does."""


@contextlib.contextmanager
def competitor(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    proc = subprocess.Popen(COMPETITOR, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it start spinning before the probe and the steps
        yield
    finally:
        proc.kill()
        proc.wait()


def default_threads() -> int:
    env = {k: v for k, v in os.environ.items() if k not in (threads.THREADS_ENV, "OMP_NUM_THREADS")}
    return threads.plan_from_environment(1, env).threads


def bench_threads(work_dir: Path, *, warmup: int, steps_per_round: int, rounds: int, limit: int) -> dict:
    cfg = build_config("dcgan", "local", {"data": {"limit": limit}, "train": {"batch_size": 64}})
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    data = bench_train.in_memory_uint8(bench_train.prepared_dataset(cfg.data, work_dir))
    step = bench_train.GanforgeStep(cfg, bench_train.endless_uint8_batches(data, cfg))
    saved = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {f"{c}_{s}": [] for s in ("idle", "busy") for c in CASES}
    chosen: dict[str, list[int]] = {"idle": [], "busy": []}
    try:
        for r in range(rounds):
            for busy in (False, True) if r % 2 == 0 else (True, False):
                state = "busy" if busy else "idle"
                with competitor(busy):
                    for case in CASES if r % 2 == 0 else tuple(reversed(CASES)):
                        n = default_threads() if case == "default" else int(case)
                        if case == "default":
                            chosen[state].append(n)
                        torch.set_num_threads(n)
                        step()  # a switch of the thread count settles in its first step
                        t0 = time.perf_counter()
                        for _ in range(steps_per_round):
                            step()
                        rates[f"{case}_{state}"].append(
                            steps_per_round * cfg.train.batch_size / (time.perf_counter() - t0)
                        )
    finally:
        torch.set_num_threads(saved)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    values = {
        "threads_busy_over_idle": ratio("default_busy", "default_idle"),
        "threads_default_vs_2_busy": ratio("default_busy", "2_busy"),
        "threads_default_vs_1_idle": ratio("default_idle", "1_idle"),
        **{f"threads_{k}_img_per_s": statistics.median(v) for k, v in rates.items()},
    }
    return {
        "values": values,
        "img_per_s_per_round": rates,
        "default_threads_chosen": chosen,
        "setting": {
            "config": "dcgan local profile: 28² × 1 channel, ngf=ndf=32, batch 64",
            "competitor": " ".join(COMPETITOR[1:]),
            "warmup_steps": warmup,
            "steps_per_round": steps_per_round,
            "rounds": rounds,
            "cores": threads.usable_cores(),
        },
    }


def format_threads(details: dict) -> str:
    """A small table: img/s per case, with and without the competitor, and the default's choice."""
    rates = details["img_per_s_per_round"]
    lines = ["threads (local DCGAN 28², img/s, median of rounds):  " + "  ".join(f"{c:>8s}" for c in CASES)]
    for state, label in (("idle", "no competitor"), ("busy", "1 busy competitor")):
        row = "  ".join(f"{statistics.median(rates[f'{c}_{state}']):8.0f}" for c in CASES)
        lines.append(f"  {label:<50s}{row}   default chose {details['default_threads_chosen'][state]}")
    return "\n".join(lines)
