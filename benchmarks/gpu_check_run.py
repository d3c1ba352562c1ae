"""gpu_check's machinery: time budgets, the report table, running the core CLI, preparing the data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, part: str, item: str, status: str, value: str = "", seconds: float | None = None, **extra):
        row = {"part": part, "item": item, "status": status, "value": value, "seconds": seconds, **extra}
        self.rows.append(row)
        mark = {"ok": "✓", "fail": "✗", "skipped": "-", "cut": "✗ (time)"}.get(status, status)
        print(f"[gpu-check] {part:8} {item:32} {mark} {value}", file=sys.stderr, flush=True)
        return row

    def table(self) -> str:
        lines = [("part", "item", "status", "value", "s")]
        for r in self.rows:
            s = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append((r["part"], r["item"], r["status"], r["value"], s))
        widths = [max(len(str(line[i])) for line in lines) for i in range(5)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def cli(args: list[str], env: dict, timeout: float) -> tuple[int, float, str, str]:
    """``python -m ganforge.cli ARGS``: (exit status, seconds, stdout, stderr's tail); 124 when cut at timeout."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ganforge.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout),
        )
        return done.returncode, time.perf_counter() - t0, done.stdout, done.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return 124, time.perf_counter() - t0, "", err[-2000:]


def last_json(stdout: str) -> dict:
    """The JSON object a ganforge command printed last (pretty-printed or on one line)."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout[stdout.find("{") :]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def prepare_data(work: Path, idx: Path, env: dict, profile: str, budget: Budget, report: Report) -> dict:
    """Prepared datasets from the IDX files: train (the test split when no train files came), test, and
    cyclegan's two domains of each; 64² for the bench."""
    have_train = (idx / "train-images-idx3-ubyte.gz").exists() or (idx / "train-images-idx3-ubyte").exists()
    data = {}
    jobs = [("test", "dcgan", "test", None), ("train", "dcgan", "train" if have_train else "test", None)]
    jobs += [(f"{d}-{s}", "cyclegan", s, d) for d in ("a", "b") for s in ("train", "test")]
    for name, preset, split, domain in jobs:
        if domain and split == "train" and not have_train:
            split = "test"
        out = work / "data" / f"{name}-{profile}"
        args = ["prep", "--preset", preset, "--profile", profile, "--source", str(idx), "--split", split]
        args += ["--out", str(out)] + (["--domain", domain] if domain else [])
        if not (out / "manifest.json").exists():
            rc, secs, _, err = cli(args, env, budget.left())
            if rc != 0:
                report.add("data", f"prep {name}", "fail", one_line(err), secs)
                raise RuntimeError(f"prep {name} failed: {one_line(err)}")
        data[name] = out
    report.add("data", "Fashion-MNIST", "ok", f"train split: {'train' if have_train else 'test (no train IDX)'}")
    return data
