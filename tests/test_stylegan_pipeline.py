"""stylegan through the DAG and the CLI: the README's commands for it, run exactly as written.

One real tiny DAG run (kfp.local SubprocessRunner, sqlite MLflow, real Fashion-MNIST) that registers a champion,
sampled from the registry, also with truncation and style mixing; then prep → train → generate with them from
the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## StyleGAN: `stylegan`", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def run_in_order(lines: list[str], cwd: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """Run ``lines`` one after the other through a shell, each exactly as written; stop at the first failure."""
    done = []
    for line in lines:
        done.append(subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200))
        if done[-1].returncode != 0:
            break
    return done


def test_readme_commands_train_register_and_mix(tmp_path):
    """Every line as written. The block is two chains that share no file: the DAG then sampling its registered
    champion, also mixed (lines 1-3: GANFORGE_HOME's store), and prep → train → mix from that checkpoint (lines 4-6:
    ./data, ./runs, ./samples/stylegan-mix). Each chain runs in order; the two run at once: the DAG's steps and
    the second training each run on one thread (OMP_NUM_THREADS=1 from cli_env), so on two cores they overlap."""
    from concurrent.futures import ThreadPoolExecutor

    home = tmp_path / "home"
    env = cli_env(GANFORGE_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    lines = readme_commands()
    assert lines[0].startswith("python -m pipelines run stylegan --profile tiny") and len(lines) == 6
    assert lines[3].startswith("ganforge prep ") and lines[1].startswith("ganforge generate --model models:/")
    chains = (lines[:3], lines[3:])
    with ThreadPoolExecutor(len(chains)) as pool:
        results = list(pool.map(lambda chain: run_in_order(chain, tmp_path, env), chains))
    for chain, ran in zip(chains, results):
        for line, done in zip(chain, ran):
            assert done.returncode == 0, line + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
        assert len(ran) == len(chain)

    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = c.search_runs([c.get_experiment_by_name("stylegan").experiment_id])
    assert run.info.status == "FINISHED" and np.isfinite(run.data.metrics["fid"])
    assert int(c.get_model_version_by_alias("stylegan", "champion").version) == 1

    registered = json.loads((tmp_path / "samples" / "stylegan" / "generation.json").read_text())
    assert registered["pipeline"] == "stylegan" and registered["n"] == 16 and "truncation" not in registered
    champion_mix = json.loads((tmp_path / "samples" / "champion-mix" / "generation.json").read_text())
    assert (champion_mix["model"], champion_mix["truncation"], champion_mix["mix_layers"]) == (
        "models:/stylegan@champion",
        0.7,
        "fine",
    )
    mixed = json.loads((tmp_path / "samples" / "stylegan-mix" / "generation.json").read_text())
    assert (mixed["truncation"], mixed["mix_seed"], mixed["mix_layers"], mixed["mix_seeds"]) == (0.7, 1, "coarse", 6)
    side = 2 + 7 * 30  # (6 + 1)² tiles of 28 px with 2-px gutters
    assert Image.open(tmp_path / "samples" / "stylegan-mix" / "mixing.png").size == (side, side)
