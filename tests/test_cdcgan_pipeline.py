"""cdcgan through the DAG: the README's commands for it, run exactly as written.

One real tiny DAG run (`make run PIPELINE=cdcgan PROFILE=tiny`: kfp.local SubprocessRunner, sqlite
MLflow, real Fashion-MNIST), then the README's two `ganforge generate` commands against its champion,
its `ganforge verify-model` command and its serving block in an interpreter that cannot import ganforge.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cli_env
from ganforge.labels import FASHION_MNIST_CLASSES
from test_serving import ISOLATED_PRELUDE, SITE_PACKAGES, isolated_python, run_serving_command, serving_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the DAG's subprocess timeout is 1200 s


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Class-conditional generation: `cdcgan`", 1)[1].split("\n## ", 1)[0]


def readme_commands() -> list[str]:
    """The lines of the section's ```bash block."""
    block = re.search(r"```bash\n(.*?)```", readme_section(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    """The README's `make run` line, from the checkout, into a fresh GANFORGE_HOME."""
    home = tmp_path_factory.mktemp("cdcgan-home")
    (run_line,) = [c for c in readme_commands() if c.startswith("make run")]
    done = subprocess.run(
        run_line,
        shell=True,
        cwd=ROOT,
        env=cli_env(GANFORGE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home


def _client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_dag_scores_classes_and_registers_a_conditional_champion(dag):
    c = _client(dag)
    (run,) = c.search_runs([c.get_experiment_by_name("cdcgan").experiment_id])
    assert run.info.status == "FINISHED"
    steps = {k.removeprefix("ganforge.step."): v for k, v in run.data.tags.items() if k.startswith("ganforge.step.")}
    assert steps == dict.fromkeys(["start-run", "prep-train", "prep-test", "train", "evaluate", "register"], "done")
    m = run.data.metrics
    for key in ("fid", "fid_class_min", "fid_class_max", "class_accuracy", "classifier_test_accuracy"):
        assert np.isfinite(m[key]), key
    assert m["fid_class_min"] <= m["fid_class_mean"] <= m["fid_class_max"]
    assert all(f"fid_class_{i}" in m for i in range(10))
    assert 0 <= m["class_accuracy"] <= 1 and m["classifier_test_accuracy"] > 0.3  # tiny: 512 training images
    version = c.get_model_version_by_alias("cdcgan", "champion")
    assert json.loads(version.tags["ganforge.class_names"]) == list(FASHION_MNIST_CLASSES)
    assert json.loads(version.tags["fid_per_class"]).keys() == set(FASHION_MNIST_CLASSES)


def test_readme_generate_commands_draw_the_asked_classes(dag, tmp_path):
    env = cli_env(GANFORGE_HOME=str(dag), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for line in [c for c in readme_commands() if c.startswith("ganforge generate")]:
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    sneakers = json.loads((tmp_path / "samples" / "sneakers" / "generation.json").read_text())
    assert sneakers["class"] == "Sneaker" and sneakers["n"] == 64 and sneakers["version"] == 1
    assert len(list((tmp_path / "samples" / "sneakers" / "images").iterdir())) == 64
    per_class = json.loads((tmp_path / "samples" / "per-class" / "generation.json").read_text())
    assert per_class["per_class"] and per_class["class_names"] == list(FASHION_MNIST_CLASSES)
    assert Image.open(tmp_path / "samples" / "per-class" / "grid.png").size == (2 + 8 * 30, 2 + 10 * 30)
    assert (tmp_path / "samples" / "per-class" / "interpolation.png").is_file()


def test_readme_serving_block_runs_without_ganforge_and_matches_ganforge(dag, tmp_path):
    (command,) = re.findall(r"`(ganforge verify-model [^`]*)`", readme_section())
    assert command == "ganforge verify-model models:/cdcgan@champion --out served/cdcgan"
    verified = run_serving_command(command, tmp_path, f"sqlite:///{dag / 'mlflow.db'}")
    assert verified.returncode == 0, verified.stderr[-3000:]
    snippet = re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1)
    epilogue = textwrap.dedent("""
        import json
        assert not [m for m in sys.modules if m == "ganforge" or m.startswith("ganforge.")]
        print(json.dumps({"shape": list(images.shape), "values": images.detach().ravel().tolist(),
                          "label": int(labels[0])}))
    """)
    code = ISOLATED_PRELUDE.format(site=str(SITE_PACKAGES)) + snippet + epilogue
    done = isolated_python(code, serving_env(dag), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [16, 1, 28, 28] and out["label"] == FASHION_MNIST_CLASSES.index("Sneaker")
    # ganforge's own loader (digest-checked) gives the same images for the same latents and labels
    from ganforge.generate import load_model
    from ganforge.platform import tracking

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFORGE_HOME", str(dag))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure()
        loaded = load_model("models:/cdcgan@champion")
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 100)).astype(np.float32))
    with torch.no_grad():
        ours = loaded.generator(z, torch.full((16,), out["label"]))
    assert np.allclose(np.array(out["values"], np.float32), ours.numpy().ravel(), atol=1e-6)
    assert loaded.class_names == list(FASHION_MNIST_CLASSES)
