"""cyclegan through the DAG: the README's commands for it, run exactly as written.

One real tiny DAG run (kfp.local SubprocessRunner, sqlite MLflow, real Fashion-MNIST sneakers and ankle
boots), then the README's `ganforge translate --model models:/cyclegan@champion` in a fresh process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Image-to-image translation: `cyclegan`", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    """The README's pipeline line, from the checkout, into a fresh GANFORGE_HOME."""
    home = tmp_path_factory.mktemp("cyclegan-home")
    (run_line,) = [c for c in readme_commands() if c.startswith("python -m pipelines run")]
    done = subprocess.run(
        run_line,
        shell=True,
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home


def _env(home: Path) -> dict:
    """The checkout's environment with this interpreter's bin first on PATH: `python` and `ganforge` as a user
    with the venv activated has them."""
    return cli_env(GANFORGE_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_dag_preps_two_domains_scores_both_directions_and_registers_a_champion(dag):
    c = _client(dag)
    (run,) = c.search_runs([c.get_experiment_by_name("cyclegan").experiment_id])
    assert run.info.status == "FINISHED"
    steps = {k.removeprefix("ganforge.step."): v for k, v in run.data.tags.items() if k.startswith("ganforge.step.")}
    assert steps == dict.fromkeys(["start-run", "prep-train", "prep-test", "train", "evaluate", "register"], "done")
    m = run.data.metrics
    assert m["fid"] == pytest.approx((m["fid_a2b"] + m["fid_b2a"]) / 2)
    assert 0 < m["cycle_l1_a"] < 2 and 0 < m["cycle_l1_b"] < 2
    assert run.data.params["dataset.a.class"] == "7" and run.data.params["dataset.b.class"] == "9"
    assert [a.path for a in c.list_artifacts(run.info.run_id, "evaluation")] == ["evaluation/translations.png"]
    # the FID curve over the run's snapshots (tiny: one, at the last step), as every family's evaluation logs it
    assert {a.path for a in c.list_artifacts(run.info.run_id, "fid_curve")} >= {"fid_curve/fid_curve.csv"}
    assert [h.step for h in c.get_metric_history(run.info.run_id, "fid_n32")] == [4]  # tiny: max_steps 4
    version = c.get_model_version_by_alias("cyclegan", "champion")
    assert float(version.tags["fid"]) == pytest.approx(m["fid"])  # promotion reads the mean of the two FIDs
    p = run.data.params
    assert version.tags["dataset_sha256"] == f"{p['dataset.a.train.sha256']}+{p['dataset.b.train.sha256']}"


def test_readme_translate_command_uses_the_registered_program(dag, tmp_path):
    from ganforge.cyclegan import load_translators
    from ganforge.data import IDX_STEMS, find_idx_file, read_idx

    images = read_idx(find_idx_file(Path("/usr/share/datasets/fashion-mnist"), IDX_STEMS["test"][0]), 0x803)
    labels = read_idx(find_idx_file(Path("/usr/share/datasets/fashion-mnist"), IDX_STEMS["test"][1]), 0x801)
    (tmp_path / "sneakers").mkdir()
    sneakers = images[labels == 7][:3]
    for i, image in enumerate(sneakers):
        Image.fromarray(image).save(tmp_path / "sneakers" / f"sneaker{i}.png")
    env = _env(dag)
    (line,) = [c for c in readme_commands() if c.startswith("ganforge translate")]
    done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "boots").iterdir()) == [f"sneaker{i}.png" for i in range(3)]
    # The registered program's A→B equals the run's checkpoint's EMA A→B generator (to a rounding level).
    (model_dir,) = (dag / "pipeline-root").glob("ganforge-cyclegan-*/train/model")
    G_ab, _, _ = load_translators(model_dir)
    with torch.no_grad():
        x = torch.from_numpy(sneakers[:, None].astype(np.float32)) / 127.5 - 1
        expected = ((G_ab(x).clamp(-1, 1) + 1) * 127.5).round().numpy()[:, 0]
    got = np.stack([np.asarray(Image.open(tmp_path / "boots" / f"sneaker{i}.png"), np.float32) for i in range(3)])
    assert np.abs(got - expected).max() <= 1


def test_every_preset_compiles_to_one_dag_shape(tmp_path):
    """One DAG for every family: cyclegan's splits hold both domains, so it compiles to the tasks dcgan
    does (prep per split, train, evaluate, register) with the same components."""
    import yaml

    from pipelines.compile import compile_pipeline

    def tasks(name: str) -> dict:
        docs = list(yaml.safe_load_all(compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()))
        return docs[0]["components"]["comp-exit-handler-1"]["dag"]["tasks"]

    cyclegan, dcgan = tasks("cyclegan"), tasks("dcgan")
    assert set(cyclegan) == set(dcgan) == {"start-run", "prep-data", "prep-data-2", "train", "evaluate", "register"}
    preps = [t for k, t in cyclegan.items() if k.startswith("prep")]
    splits = {t["inputs"]["parameters"]["split"]["runtimeValue"]["constant"] for t in preps}
    assert splits == {"train", "test"}
    for name, task in cyclegan.items():
        assert task["componentRef"] == dcgan[name]["componentRef"], name
    assert {"prep-data", "prep-data-2"} <= set(cyclegan["evaluate"]["dependentTasks"])
