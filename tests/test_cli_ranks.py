"""`ganforge train … --nproc 2`, the README's command, run exactly as written.

The CLI re-launches itself under torchrun for N ranks. Forwarding its own argv used to put
``--nproc`` after ``-m ganforge.cli``, which torchrun's parser (Python 3.11) rejects as an
ambiguous abbreviation of ``--nproc-per-node``: the ranks now get the settled config as a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

COMMAND = "ganforge train --preset dcgan --profile tiny --data D --out R --nproc 2"


@pytest.mark.slow  # torchrun + two ranks importing torch: ~15-60 s on a shared 2-core machine
def test_train_with_nproc_runs_two_ranks(fashion_train, tmp_path):
    from ganforge.threads import usable_cores

    if usable_cores() < 2:
        pytest.skip("one usable core: ganforge refuses two CPU ranks here (one rank per core at most)")
    (tmp_path / "D").symlink_to(fashion_train)
    env = cli_env(
        LOGLEVEL="INFO",  # torchrun's agent then reports the ranks it started
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    done = subprocess.run(COMMAND, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ambiguous option" not in done.stderr
    # torchrun started two workers: ranks 0 and 1 of a world of 2 ...
    assert "global_ranks=[0, 1]" in done.stderr and "global_world_sizes=[2, 2]" in done.stderr, done.stderr[-3000:]
    # ... and each of them trained every step (each rank prints its own line when training ends)
    ranks = sorted(line for line in done.stderr.splitlines() if " of 2: trained steps " in line)
    assert ranks == ["rank 0 of 2: trained steps 1-8", "rank 1 of 2: trained steps 1-8"], done.stderr[-3000:]
    # ... and the run's result is printed once (rank 0), from a 2-rank config.
    (result,) = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert result["step"] == 8 and Path(tmp_path, result["checkpoint"]).is_file()
    assert json.loads((tmp_path / "R" / "config.json").read_text())["train"]["nproc"] == 2
    # The launcher held the run's lock for its ranks (rank 0 recognised it instead of refusing) and released it.
    assert not (tmp_path / "R" / ".ganforge-train.lock").exists()


def test_more_ranks_than_cores_is_refused_in_one_line_before_any_process(tmp_path):
    """No GPU here: --nproc above the usable cores exits 2 with one line naming both numbers, before the
    config's own checks and before torchrun (nothing is written, no rank starts)."""
    from ganforge.threads import usable_cores

    cores = usable_cores()
    command = [sys.executable, "-m", "ganforge.cli", "train", "--preset", "dcgan", "--profile", "tiny"]
    command += ["--data", str(tmp_path / "none"), "--out", str(tmp_path / "R"), "--nproc", str(cores + 1)]
    done = subprocess.run(command, env=cli_env(LOGLEVEL="INFO"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert f"--nproc {cores + 1} is more than the {cores} usable CPU core(s)" in lines[0]
    assert not (tmp_path / "R").exists()


def test_more_ranks_than_gpus_is_refused_naming_both_numbers():
    from ganforge.config import ConfigError
    from ganforge.launch import check_nproc

    with pytest.raises(ConfigError, match=r"^--nproc 2 is more than the 1 visible GPU\(s\).*--nproc 1 or --nproc auto"):
        check_nproc(2, gpus=1, cpus=16)
    with pytest.raises(ConfigError, match=r"^train.nproc=3 is more than the 2 usable CPU core\(s\)"):
        check_nproc(3, gpus=0, cpus=2, what="train.nproc=")
    check_nproc(8, gpus=8, cpus=2)  # GPU ranks are not limited by the cores
    check_nproc(2, gpus=0, cpus=2)


def test_nproc_auto_is_one_rank_per_gpu_else_one():
    from ganforge.cli import _config_from_args, build_parser
    from ganforge.launch import auto_nproc

    assert (auto_nproc(0), auto_nproc(1), auto_nproc(8)) == (1, 1, 8)
    args = build_parser().parse_args(["train", "--profile", "tiny", "--data", "D", "--out", "R", "--nproc", "auto"])
    assert _config_from_args(args).train.nproc == 1  # this machine has no GPU
