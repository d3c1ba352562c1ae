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
