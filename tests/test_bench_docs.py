"""`make docs`: the report `make bench` writes, rendered into docs/benchmarks.md between its markers — the page's
record of earlier runs untouched, a second render replacing the first, bad input refused without a write."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, cli_env

sys.path.insert(0, str(ROOT / "benchmarks"))

import render_docs  # noqa: E402
import run as bench_run  # noqa: E402


def report(**values: float) -> dict:
    """A report as benchmarks/run.py writes it, its metric entries made by run.py itself."""
    return {
        "schema_version": bench_run.SCHEMA_VERSION,
        "started_at": "2026-12-04T17:00:00+00:00",
        "quick": False,
        "machine": {
            "cpu_count": 2,
            "cpu_model": "AMD EPYC | Zen 3",
            "torch_version": "2.14.1",
            "torch_threads": 1,
            "thread_policy": "1 thread(s) (--threads)",
        },
        "load_average": {"before": [1.25, 1.0, 1.0], "after": [1.75, 1.0, 1.0]},
        "metrics": {name: bench_run.metric_entry(name, v) for name, v in values.items()},
        "details": {},
        "errors": {"ddp": "RuntimeError: gloo timed out"},
        "seconds": 612.4,
    }


def render(bench, doc) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "render_docs.py"), "--bench", str(bench), "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )


def test_the_report_replaces_only_the_marked_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    shipped = (ROOT / "docs" / "benchmarks.md").read_text()
    doc.write_text(shipped)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(report(train_vs_naive=1.04, threads_busy_over_idle=0.649)))
    done = render(bench, doc)
    assert done.returncode == 0, done.stderr
    page = doc.read_text()
    head, table = page.split(render_docs.BEGIN)
    table, tail = table.split(render_docs.END)
    assert head == shipped.split(render_docs.BEGIN)[0] and tail == shipped.split(render_docs.END)[1]
    assert "| `train_vs_naive` | 1.04 ratio | ≥ 1.5 | MISS |" in table, table
    assert "| `threads_busy_over_idle` | 0.649 ratio | ≥ 0.667 | MISS |" in table, table
    assert "AMD EPYC \\| Zen 3" in table and "load average 1.2 → 1.8" in table and "group `ddp`" in table, table
    bench.write_text(json.dumps(report(train_vs_naive=1.6)))
    assert render(bench, doc).returncode == 0
    again = doc.read_text()
    assert again.count(render_docs.BEGIN) == 1 and again.count(render_docs.END) == 1
    table = again.split(render_docs.BEGIN)[1].split(render_docs.END)[0]
    assert "| `train_vs_naive` | 1.6 ratio | ≥ 1.5 | PASS |" in table and "threads_busy_over_idle" not in table


def test_a_missing_report_or_markers_are_one_line_and_no_write(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nno markers here\n")
    done = render(tmp_path / "absent.json", doc)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "run `make bench` first" in done.stderr
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(report(train_vs_naive=1.04)))
    done = render(bench, doc)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and render_docs.BEGIN in done.stderr
    assert doc.read_text() == "# Benchmarks\n\nno markers here\n"
    bench.write_text('{"metrics": {}}')
    done = render(bench, doc)
    assert done.returncode == 2 and "not a report of benchmarks/run.py" in done.stderr


def test_make_docs_renders_the_checkouts_report_into_the_shipped_page():
    done = subprocess.run(["make", "-n", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "benchmarks/render_docs.py --bench build/bench.json --doc docs/benchmarks.md" in done.stdout
    assert render_docs.BEGIN in (ROOT / "docs" / "benchmarks.md").read_text()
