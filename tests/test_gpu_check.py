"""`make gpu-check`'s command, run here on the CPU in --smoke mode (tiny profile, 2 steps, 16 images) so that the
prepared GPU command cannot rot between the sessions that have a GPU: the carry bundle is written and joined,
and every part — presets (train, evaluate, generate/translate through the CLI), bench, FID — runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASHION_DIR, cli_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~3 min on a shared 2-core machine: eight CLI processes, Inception features on the CPU
def test_gpu_check_smoke_runs_every_part_from_a_joined_bundle(torchscript, tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")]
    env = cli_env()
    bundle = tmp_path / "bundle"
    made = subprocess.run(
        [*script, "--make-bundle", str(bundle), "--idx", str(FASHION_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in bundle.iterdir()}
    assert set(sizes) == {"1", "2", "3"} and max(sizes.values()) <= 60 * 2**20, sizes
    env.pop("GANFORGE_INCEPTION_WEIGHTS", None)  # the joined bundle supplies it
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(
        [*script, "--device", "cpu", "--smoke", "--presets", "dcgan,cyclegan", "--out", str(out)]
        + ["--work-dir", str(tmp_path / "work"), "--bundle", *(str(bundle / d) for d in "123")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["part"], r["item"]): r["status"] for r in report["rows"]}
    for item in ("dcgan train 2 steps", "dcgan evaluate FID-16", "dcgan generate (cpu)", "cyclegan translate (cpu)"):
        assert rows[("presets", item)] == "ok", rows
    assert rows[("bench", "examples loop fp32 64²/b64")] == "ok" and ("bench", "bf16_vs_fp32") in rows, rows
    assert rows[("fid", "features vs CPU reference")] == "ok", rows
    assert "FID-16 end to end, cached real" in {item for part, item in rows if part == "fid"}, rows
    assert "part" in done.stdout.splitlines()[0] and "report:" in done.stdout  # the one table, then where it went


def test_readme_gpu_commands_expand_to_the_script_as_written():
    """The README's `make gpu-…` lines, through `make -n` as a user types them."""
    import re
    import shlex

    section = (ROOT / "README.md").read_text().split("### GPU check", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make gpu-[^\n]*)$", section, flags=re.M)
    assert len(commands) == 2, commands
    ran = {}
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", "make -n " + command[len("make ") :]], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        (line,) = [ln for ln in done.stdout.splitlines() if "benchmarks/gpu_check.py" in ln]
        ran[command.split()[1]] = shlex.split(line)
    words = ran["gpu-check"]
    assert words[words.index("--bundle") + 1 :][:3] == ["/tmp/gf1", "/tmp/gf2", "build/gpu-bundle/3"], words
    assert ran["gpu-bundle"][-2:] == ["--make-bundle", "build/gpu-bundle"]
