"""The benchmark runner's machinery and report schema; never its speed (speed lives in `make bench`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench_run  # noqa: E402

QUICK_METRICS = ["train_img_per_s", "train_vs_naive"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--only",
            ",".join(QUICK_METRICS),
            "--out",
            str(out),
            "--work-dir",
            str(tmp / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_run_writes_the_requested_metrics_with_targets(quick_report):
    _, report = quick_report
    assert report["schema_version"] == bench_run.SCHEMA_VERSION
    assert report["quick"] is True
    assert report["errors"] == {}
    assert list(report["metrics"]) == QUICK_METRICS
    for name, entry in report["metrics"].items():
        assert isinstance(entry["value"], float) and math.isfinite(entry["value"]) and entry["value"] > 0, name
        assert "target" in entry and entry["unit"] and entry["what"]
    assert report["metrics"]["train_vs_naive"]["target"] == {"op": ">=", "value": 1.5}
    assert report["metrics"]["train_vs_naive"]["status"] in ("PASS", "MISS")
    assert report["metrics"]["train_img_per_s"]["status"] == "REPORT"


@pytest.mark.slow
def test_quick_run_records_the_machine_and_the_raw_rounds(quick_report):
    _, report = quick_report
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert machine["torch_version"].split("+")[0].count(".") == 2
    rounds = report["details"]["train"]["img_per_s_per_round"]
    assert set(rounds) == {"ours", "naive"}
    assert all(len(v) == bench_run.QUICK.train_rounds and min(v) > 0 for v in rounds.values())
    assert set(report["load_average"]) == {"before", "after"}


@pytest.mark.slow
def test_quick_run_prints_a_table_with_value_target_and_status(quick_report):
    done, _ = quick_report
    lines = done.stdout.splitlines()
    row = next(line for line in lines if line.startswith("train_vs_naive"))
    assert ">= 1.5" in row and ("PASS" in row or "MISS" in row)
    assert any(line.startswith("train_img_per_s") for line in lines)


def test_unknown_metric_is_refused_naming_the_valid_ones():
    done = subprocess.run(
        [sys.executable, str(RUN), "--only", "train_speed"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 2
    assert "unknown metric(s) train_speed" in done.stderr and "train_vs_naive" in done.stderr


def test_status_compares_against_the_target():
    assert bench_run.status_of(1.6, 1.5) == "PASS"
    assert bench_run.status_of(1.5, 1.5) == "PASS"
    assert bench_run.status_of(1.4, 1.5) == "MISS"
    assert bench_run.status_of(0.7, None) == "REPORT"


def test_a_non_finite_measurement_is_an_error_not_a_number():
    with pytest.raises(ValueError, match="train_vs_naive came out as nan"):
        bench_run.collect("train", {"values": {"train_vs_naive": float("nan")}}, {"train_vs_naive"})


def test_a_missing_measurement_is_an_error():
    with pytest.raises(ValueError, match="did not produce train_vs_naive"):
        bench_run.collect("train", {"values": {"train_img_per_s": 50.0}}, {"train_img_per_s", "train_vs_naive"})


def test_ratio_pairs_rounds_measured_back_to_back():
    from bench_train import Measured

    m = Measured({"a": [10.0, 40.0, 12.0], "b": [5.0, 10.0, 12.0]})
    assert m.ratio("a", "b") == 2.0  # per-round ratios 2, 4, 1 → median 2 (not 62/27)
    assert m.median("a") == 12.0


def test_inception_flop_count_is_the_published_multiply_adds_times_two(torchscript):
    """The peak fraction's numerator: Inception-v3 at 299² is 5.71 G multiply-adds (torchvision's model table
    lists it as "GFLOPS 5.71", which counts multiply-adds), so 11.4 G FLOPs. Counting multiply-adds as one FLOP,
    or a wrong input size, moves it far outside 1 %."""
    import bench_metrics

    from ganforge import metrics

    net = metrics.load_torchscript(torchscript.path)
    assert bench_metrics.inception_flops(net) == pytest.approx(2 * 5.71e9, rel=0.01)


def test_inception_ceiling_line_divides_the_peak_by_the_flops():
    ceiling = {
        "gflop_per_img": 10.0,
        "peak": {"gflop_per_s": 150.0, "how": "2 core(s) × … = 150.0 GFLOP/s"},
        "img_per_s_at_peak": 15.0,
        "img_per_s": 12.0,
        "runtime": "openvino-x",
    }
    text = bench_run.format_details({"inception": {"other_values": {"inception_ceiling": ceiling}}})
    assert "at most 15.0 img/s at 100 % of peak" in text and "ran 12.0 img/s = 80% of peak" in text


@pytest.mark.slow
def test_gpu_section_is_skipped_without_cuda_and_says_why(quick_report):
    done, report = quick_report
    assert "GPU section: skipped — no CUDA device" in done.stdout
    assert report["gpu"]["skipped"].startswith("no CUDA device")
