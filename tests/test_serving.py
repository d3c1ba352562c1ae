"""Registered generators load without ganforge and without unpickling anything.

Real parts only: a sqlite MLflow store, real tiny DCGAN and WaveGAN generators registered by
``registry.register_generator`` (pt2), the README's serving snippet run verbatim in an
interpreter that cannot import ganforge, and a real pickle payload planted in a stored model.
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
from mlflow import MlflowClient

from conftest import ROOT, cli_env
from ganforge.config import build_config
from ganforge.generate import generate_to_dir
from ganforge.models import build_models
from ganforge.platform import registry, tracking
from tampering import (
    assert_refused,
    ganforge,
    plant_payload,
    rewrite_digest_tag,
    sqlite_store,
    stored_archive,
)

SITE_PACKAGES = Path(torch.__file__).resolve().parents[1]

# An interpreter that really lacks ganforge: no site processing (so no editable-install .pth),
# sys.path = the standard library + the venv's site-packages, and an import hook that fails
# loudly if anything still tries to import ganforge.
ISOLATED_PRELUDE = textwrap.dedent("""
    import importlib.abc, sys
    sys.path[:] = [p for p in sys.path if p.startswith(sys.base_prefix)] + [{site!r}]

    class NoGanforge(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ganforge" or name.startswith("ganforge."):
                raise ImportError("ganforge is not installed here (the test blocks it)")
            return None

    import importlib.util
    assert importlib.util.find_spec("ganforge") is None, "ganforge is importable"
    sys.meta_path.insert(0, NoGanforge())
""")
ISOLATED_EPILOGUE = textwrap.dedent("""
    import json
    assert not [m for m in sys.modules if m == "ganforge" or m.startswith("ganforge.")]
    print(json.dumps({"shape": list(images.shape), "dtype": str(images.dtype), "values": images.ravel().tolist()}))
""")


def readme_serving_section() -> str:
    return (ROOT / "README.md").read_text().split("### Serving the champion", 1)[1]


def readme_serving_snippet() -> str:
    """The first ```python block under the README's "Serving the champion" heading."""
    return re.search(r"```python\n(.*?)```", readme_serving_section(), re.S).group(1)


def readme_serving_command() -> str:
    """The one line of the section's ```bash block: ``ganforge verify-model`` into a folder."""
    (line,) = re.search(r"```bash\n(.*?)```", readme_serving_section(), re.S).group(1).strip().splitlines()
    return line


def for_model(text: str, name: str) -> str:
    """The README's serving text for model ``name`` instead of ``dcgan``."""
    return text.replace("models:/dcgan@champion", f"models:/{name}@champion").replace("served/dcgan", f"served/{name}")


def run_serving_command(line: str, cwd: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    """The README's ``ganforge verify-model`` line through a shell, with this checkout's ganforge."""
    env = cli_env(
        MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    return subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving-home")


@pytest.fixture
def store(home, monkeypatch) -> str:
    return sqlite_store(home, monkeypatch)


def register(preset: str, fid: float) -> dict:
    """A seeded, untrained generator of ``preset`` (tiny), registered and promoted to champion."""
    cfg = build_config(preset, "tiny")
    torch.manual_seed(0)
    generator, _ = build_models(cfg.model, cfg.data)
    run_id = tracking.start_pipeline_run(cfg)
    version = registry.register_generator(run_id, generator, cfg, {"fid": fid}, tags={})
    assert registry.promote(cfg.model_name, version, margin=0.0)["alias"] == "champion"
    return {"cfg": cfg, "generator": generator.eval(), "version": version, "name": cfg.model_name}


@pytest.fixture(scope="module")
def champions(home) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFORGE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure()
        return {"dcgan": register("dcgan", 80.0), "wavegan": register("wavegan", 5.0)}


def isolated_python(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )


def serving_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON", "GANFORGE_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.parametrize("preset", ["dcgan", "wavegan"])
def test_readme_serving_snippet_loads_the_champion_without_ganforge(preset, champions, home, tmp_path):
    """The README's two blocks, verbatim (for wavegan with the model name swapped): `ganforge
    verify-model` writes the verified champion into a folder, then, in an interpreter where
    ganforge cannot be imported, MLflow's pyfunc loads that folder with pickle deserialization
    disallowed, and predict(latents) gives the generator's outputs."""
    line, snippet = readme_serving_command(), readme_serving_snippet()
    assert line == "ganforge verify-model models:/dcgan@champion --out served/dcgan"
    assert 'mlflow.pyfunc.load_model("served/dcgan"' in snippet
    line, snippet = for_model(line, preset), for_model(snippet, preset)
    verified = run_serving_command(line, tmp_path, f"sqlite:///{home / 'mlflow.db'}")
    assert verified.returncode == 0, verified.stderr[-3000:]
    champion = champions[preset]
    manifest = json.loads(verified.stdout)
    assert (manifest["name"], manifest["version"]) == (champion["name"], champion["version"])
    assert json.loads((tmp_path / "served" / preset / registry.VERIFIED_MANIFEST).read_text())["files"] == sorted(
        ["MLmodel", "conda.yaml", "data/model.pt2", "input_example.json", "python_env.yaml"]
        + ["registered_model_meta", "requirements.txt", "serving_input_example.json"]
    )
    code = ISOLATED_PRELUDE.format(site=str(SITE_PACKAGES)) + snippet + ISOLATED_EPILOGUE
    done = isolated_python(code, serving_env(home), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])

    latents = np.random.default_rng(0).standard_normal((16, champion["cfg"].model.nz)).astype(np.float32)
    with torch.no_grad():
        expected = champion["generator"](torch.from_numpy(latents)).numpy()
    assert served["shape"] == list(expected.shape) == ([16, 1, 28, 28] if preset == "dcgan" else [16, 1, 16384])
    assert served["dtype"] == "float32"
    assert np.allclose(np.array(served["values"], dtype=np.float32).reshape(expected.shape), expected, atol=1e-5)

    if preset == "dcgan":  # run again (the next deployment): the earlier verified folder is replaced
        assert run_serving_command(line, tmp_path, f"sqlite:///{home / 'mlflow.db'}").returncode == 0
        assert sorted(p.name for p in (tmp_path / "served").iterdir()) == [preset]


@pytest.mark.slow
def test_readme_serving_snippet_against_a_real_mlflow_server(tmp_path, monkeypatch):
    """The same blocks, verbatim, where serving teams meet the model: a real `mlflow server`
    (artifacts proxied by the server); the Python block from an interpreter without ganforge."""
    from servers import mlflow_server

    with mlflow_server(tmp_path / "server") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.configure()
        champion = register("dcgan", 50.0)
        verified = run_serving_command(readme_serving_command(), tmp_path, uri)
        assert verified.returncode == 0, verified.stderr[-3000:]
        env = serving_env(tmp_path)
        env["MLFLOW_TRACKING_URI"] = uri
        code = ISOLATED_PRELUDE.format(site=str(SITE_PACKAGES)) + readme_serving_snippet() + ISOLATED_EPILOGUE
        done = isolated_python(code, env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    latents = np.random.default_rng(0).standard_normal((16, 100)).astype(np.float32)
    with torch.no_grad():
        expected = champion["generator"](torch.from_numpy(latents)).numpy()
    assert served["shape"] == [16, 1, 28, 28]
    assert np.allclose(np.array(served["values"], dtype=np.float32).reshape(expected.shape), expected, atol=1e-5)


def test_the_isolated_interpreter_really_lacks_ganforge(home, tmp_path):
    """The check the serving test relies on: the same prelude fails as soon as code imports ganforge."""
    code = ISOLATED_PRELUDE.format(site=str(SITE_PACKAGES)) + "import ganforge\n"
    done = isolated_python(code, serving_env(home), tmp_path)
    assert done.returncode != 0 and "ganforge is not installed here" in done.stderr


def test_a_planted_pickle_is_never_run(champions, store, home, tmp_path):
    """Issue 13.1: a pickle payload planted in the stored model is refused, never executed, by
    ganforge (sha256 mismatch; and MLflow's pickle-free check when the tag is rewritten to
    match) and by the serving recipe's `ganforge verify-model`. Control: torch.export.load alone does run it."""
    champion = register("dcgan", 70.0)  # a version of its own, so the other tests keep theirs
    name, version = champion["name"], champion["version"]
    archive = stored_archive(name, version)
    marker = tmp_path / "payload-ran"
    plant_payload(archive, marker)

    # 1. ganforge generate: one line, exit 2, nothing written, payload not run.
    out = tmp_path / "out"
    done = ganforge(
        "generate", "--model", f"models:/{name}@champion", "--out", str(out), "-n", "2", home=home, cwd=ROOT
    )
    assert_refused(done, "do not match the sha256 recorded at registration", f"models:/{name}/{version}")
    assert not out.exists() and not marker.exists()

    # 2. Someone who can change the file can perhaps change the tag too: MLflow's pickle-free
    #    check (which ganforge always turns on) still refuses the archive before torch reads it.
    rewrite_digest_tag(name, version, tmp_path)
    with pytest.raises(registry.RegistryError, match=r"refusing to load .*not a pickle-free payload"):
        generate_to_dir(f"models:/{name}@champion", tmp_path / "out2", n=2)
    assert not marker.exists()

    # 3. The serving recipe's first step (with this model's name) refuses it too, writing nothing.
    line = readme_serving_command().replace("models:/dcgan@champion", f"models:/{name}/{version}")
    done = run_serving_command(line, tmp_path, f"sqlite:///{home / 'mlflow.db'}")
    assert_refused(done, "not a pickle-free payload")
    assert not marker.exists() and not any((tmp_path / "served").rglob("*"))  # no model, no temporary

    # Control: the planted record is a live payload — torch.export.load on its own runs it.
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.export.load({str(archive)!r})"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert marker.read_text() == "payload ran"


def test_a_version_without_a_recorded_sha256_is_not_loaded(champions, store, tmp_path):
    """A version registered by an older ganforge (no sha256 tag, pickle format) is refused with the fix."""
    name, version = champions["dcgan"]["name"], champions["dcgan"]["version"]
    c = MlflowClient()
    recorded = c.get_model_version(name, str(version)).tags[registry.ARTIFACT_SHA256_TAG]
    c.delete_model_version_tag(name, str(version), registry.ARTIFACT_SHA256_TAG)
    try:
        with pytest.raises(registry.RegistryError, match=r"has no ganforge.artifact_sha256 tag.*re-register"):
            registry.load_registered_generator(f"models:/{name}/{version}")
    finally:
        c.set_model_version_tag(name, str(version), registry.ARTIFACT_SHA256_TAG, recorded)
    assert registry.load_registered_generator(f"models:/{name}/{version}")(torch.zeros(2, 100)).shape == (2, 1, 28, 28)


def test_registered_artifact_is_pt2_with_the_latent_signature(champions, store):
    """The logged model: a pt2 archive (no model.pth), signature and input example of (B, nz) latents."""
    import mlflow

    for preset, champion in champions.items():
        uri = f"models:/{champion['name']}/{champion['version']}"
        info = mlflow.models.get_model_info(uri)
        assert info.flavors["pytorch"]["model_data"] == "data"
        (latent,), (output,) = info.signature.inputs.inputs, info.signature.outputs.inputs
        assert (str(latent.type), tuple(latent.shape)) == ("float32", (-1, 100)), preset
        assert tuple(output.shape) == ((-1, 1, 28, 28) if preset == "dcgan" else (-1, 1, 16384)), preset
        files = mlflow.artifacts.list_artifacts(f"{uri}/data")
        assert [Path(f.path).name for f in files] == ["model.pt2"], preset
        example = json.loads(mlflow.artifacts.load_text(f"{uri}/input_example.json"))
        assert np.asarray(example).shape == (2, 100), preset


def test_a_registered_generator_moves_to_another_device(champions, store):
    """ganforge's non-CPU branch (torch.export's move_to_device_pass on the verified archive),
    run on the meta device because this machine has no GPU."""
    for preset, champion in champions.items():
        generator = registry.load_registered_generator(
            f"models:/{champion['name']}/{champion['version']}", map_location="meta"
        )
        assert {p.device.type for p in generator.parameters()} == {"meta"}, preset
        out = generator(torch.zeros(3, 100, device="meta"))
        assert out.device.type == "meta" and tuple(out.shape) == (
            (3, 1, 28, 28) if preset == "dcgan" else (3, 1, 16384)
        ), preset
