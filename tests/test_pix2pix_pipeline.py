"""pix2pix-sr through the DAG: the README's image-editing commands, run exactly as written.

One real tiny DAG run (kfp.local SubprocessRunner, sqlite MLflow, real Fashion-MNIST pairs), then the README's
`ganforge edit --model models:/pix2pix-sr@champion` in a fresh process, against `--checkpoint` of the same run.
"""

from __future__ import annotations

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
SECTION = "## Image editing: `pix2pix-sr`, `pix2pix-inpaint`"


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _env(home: Path) -> dict:
    """The checkout's environment with this interpreter's bin first on PATH, as with the venv activated."""
    return cli_env(GANFORGE_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    """The README's pipeline line, from the checkout, into a fresh GANFORGE_HOME."""
    home = tmp_path_factory.mktemp("pix2pix-home")
    (run_line,) = [c for c in readme_commands() if c.startswith("python -m pipelines run")]
    done = subprocess.run(run_line, shell=True, cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home


def test_dag_preps_pairs_scores_edits_beside_the_baseline_and_registers_a_champion(dag):
    c = _client(dag)
    (run,) = c.search_runs([c.get_experiment_by_name("pix2pix-sr").experiment_id])
    assert run.info.status == "FINISHED"
    steps = {k.removeprefix("ganforge.step."): v for k, v in run.data.tags.items() if k.startswith("ganforge.step.")}
    assert steps == dict.fromkeys(["start-run", "prep-train", "prep-test", "train", "evaluate", "register"], "done")
    m = run.data.metrics
    for key in ("psnr", "baseline_psnr"):
        assert 5 < m[key] < 60, (key, m[key])
    for key in ("ssim", "baseline_ssim"):
        assert -1 <= m[key] <= 1, (key, m[key])
    for key in ("fid", "baseline_fid", "kid_mean", "baseline_kid_mean"):
        assert np.isfinite(m[key]), key
    assert [a.path for a in c.list_artifacts(run.info.run_id, "evaluation")] == ["evaluation/edits.png"]
    version = c.get_model_version_by_alias("pix2pix-sr", "champion")
    assert float(version.tags["fid"]) == pytest.approx(m["fid"])  # the gate is FID, as for every family
    assert version.tags["baseline"] == "bicubic"
    assert version.tags["dataset_sha256"] == run.data.params["dataset.train.sha256"]


@pytest.fixture
def small_images(tmp_path) -> Path:
    """The README's `my-small-images/`: three held-out 14×14 inputs of the sr pairs."""
    from ganforge.data import IDX_STEMS, find_idx_file, read_idx
    from ganforge.edit_data import area_downsample

    images = read_idx(find_idx_file(Path("/usr/share/datasets/fashion-mnist"), IDX_STEMS["test"][0]), 0x803)
    small = area_downsample(images[:3, None])
    folder = tmp_path / "my-small-images"
    folder.mkdir()
    for i, image in enumerate(small):
        Image.fromarray(image[0]).save(folder / f"item{i}.png")
    return folder


def test_readme_edit_command_gives_the_checkpoints_pngs(dag, small_images, tmp_path):
    env = _env(dag)
    (line,) = [c for c in readme_commands() if c.startswith("ganforge edit")]
    done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = [f"item{i}.png" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "edited").iterdir()) == names
    (model_dir,) = (dag / "pipeline-root").glob("ganforge-pix2pix-sr-*/train/model")
    local = [sys.executable, "-m", "ganforge.cli", "edit", "--checkpoint", str(model_dir)]
    done = subprocess.run(
        [*local, "--input", "my-small-images", "--out", "from-checkpoint"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in names:
        got = np.asarray(Image.open(tmp_path / "edited" / name))
        assert got.shape == (28, 28)
        assert np.array_equal(got, np.asarray(Image.open(tmp_path / "from-checkpoint" / name))), name
