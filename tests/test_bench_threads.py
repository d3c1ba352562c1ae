"""make bench's thread-policy group and the training step's peak fraction, profile and levers: the machinery and
the report, never the speed (the numbers live in `make bench`)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_threads  # noqa: E402
import bench_train  # noqa: E402
import run as bench_run  # noqa: E402

THREAD_METRICS = ["threads_busy_over_idle", "threads_default_vs_2_busy", "threads_default_vs_1_idle"]
STEP_METRICS = ["train_peak_fraction", "ema_foreach_effect"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    only = ",".join(THREAD_METRICS + STEP_METRICS)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", only, "--out", str(out)]
    done = subprocess.run(
        cmd + ["--work-dir", str(tmp / "work")], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(out.read_text())


@pytest.mark.slow
def test_threads_group_measures_every_case_with_and_without_the_competitor(quick):
    done, report = quick
    assert report["errors"] == {}
    for name in THREAD_METRICS:
        value = report["metrics"][name]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, name
    assert report["metrics"]["threads_busy_over_idle"]["target"] == {"op": ">=", "value": 0.667}
    details = report["details"]["threads"]
    cases = {f"{c}_{s}" for c in bench_threads.CASES for s in ("idle", "busy")}
    assert set(details["img_per_s_per_round"]) == cases
    assert all(len(v) == bench_run.QUICK.threads_rounds for v in details["img_per_s_per_round"].values())
    chosen = details["default_threads_chosen"]
    assert all(1 <= n <= details["setting"]["cores"] for state in ("idle", "busy") for n in chosen[state])
    assert "threads (local DCGAN 28²" in done.stdout and "1 busy competitor" in done.stdout
    assert report["machine"]["thread_policy"]


@pytest.mark.slow
def test_train_reports_the_peak_fraction_with_its_assumption_and_where_the_time_goes(quick):
    done, report = quick
    train = report["details"]["train"]
    assert 0 < report["metrics"]["train_peak_fraction"]["value"] < 1
    assert "FMA units" in train["peak"]["how"] and "/proc/cpuinfo" in train["peak"]["how"]
    assert train["gflop_per_step"] == pytest.approx(156.3, rel=0.02)  # 64² DCGAN, batch 64: ~2.44 GFLOP/image
    seconds = train["profile"]["seconds"]
    assert set(seconds) == set(bench_train.OP_GROUPS)
    assert sum(seconds.values()) == pytest.approx(train["profile"]["wall_s"], rel=0.05)
    assert "train step profile" in done.stdout and "conv-transpose backward (G)" in done.stdout
    assert report["metrics"]["ema_foreach_effect"]["value"] > 0


def test_the_peak_is_cores_times_fma_lanes_flops_and_clock():
    mhz = max(float(x.split(":")[1]) for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("cpu MHz"))
    lanes = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    assert bench_train.fp32_peak(2)["gflop_per_s"] == pytest.approx(2 * 2 * lanes * 2 * mhz / 1000)


def test_the_profile_puts_each_op_in_its_group(tmp_path):
    cfg = bench_train.build_config(
        "dcgan", "local", {"data": {"limit": 128}, "model": {"ngf": 8, "ndf": 8}, "train": {"batch_size": 16}}
    )
    data = torch.randint(0, 255, (128, 1, 28, 28), dtype=torch.uint8)
    step = bench_train.GanforgeStep(cfg, bench_train.endless_uint8_batches(data, cfg))
    prof = bench_train.profile_step(step)["seconds"]
    for group in ("conv-transpose forward (G)", "conv-transpose backward (G)", "conv forward (D)", "conv backward (D)",
                  "BatchNorm", "activations + loss", "optimiser (Adam)", "EMA"):  # fmt: skip
        assert prof[group] > 0, group


def test_the_foreach_ema_equals_the_per_tensor_one():
    g = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema_a, ema_b = copy.deepcopy(g), copy.deepcopy(g)
    g[1].running_mean.add_(1.0)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(3.0)
    bench_train.update_ema(ema_a, g, 0.999, step=5)
    bench_train.update_ema_foreach(ema_b, g, 0.999, step=5)
    for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()):
        assert torch.equal(a, b)
