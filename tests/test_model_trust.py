"""A registered model's trust does not rest on a tag its writer can rewrite.

Whoever can write a model version's files can usually also rewrite its
``ganforge.artifact_sha256`` tag. Real parts only: a sqlite MLflow store, a real registered
pt2 generator, its stored files edited the way an attacker would (bundled ``code/``, an
edited ``loader_module``), the tag rewritten to match, and ``ganforge generate`` /
``ganforge verify-model`` run as subprocesses. Controls show each edit is a live payload.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from ganforge.config import build_config
from ganforge.platform import model_files, registry, tracking
from tampering import (
    assert_refused,
    edit_mlmodel,
    ganforge,
    plant_module,
    rewrite_digest_tag,
    sqlite_store,
    stored_model_dir,
)
from test_serving import ISOLATED_PRELUDE, SITE_PACKAGES, isolated_python, serving_env

NZ = 4


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trust-home")


@pytest.fixture
def store(home, monkeypatch) -> str:
    return sqlite_store(home, monkeypatch)


def register_tiny(name: str) -> int:
    """A small (B, 4) → (B, 1, 4, 4) generator registered under ``name`` by ganforge's own step."""
    cfg = build_config("dcgan", "tiny", {"model": {"nz": NZ}, "registry": {"model_name": name}})
    torch.manual_seed(0)
    generator = torch.nn.Sequential(torch.nn.Linear(NZ, 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 4, 4)))
    return registry.register_generator(tracking.start_pipeline_run(cfg), generator, cfg, {"fid": 1.0}, tags={})


def test_bundled_code_never_runs_in_generate(store, home, tmp_path):
    """``code: code`` + ``code/evilmod.py`` + a pickle-format ``model.pth`` whose
    ``pickle_module_info.txt`` names ``evilmod``: MLflow's pytorch loader puts ``code/`` on
    sys.path and imports that module before its own pickle check refuses the file. With the
    tag rewritten to match, ``ganforge generate`` must refuse before MLflow sees the model."""
    name = "trust-code"
    version = register_tiny(name)
    model_dir = stored_model_dir(name, version)
    marker = tmp_path / "payload-ran"
    plant_module(model_dir, marker)
    edit_mlmodel(model_dir, lambda flavors: flavors["pytorch"].update(code="code"))
    (model_dir / "data" / "model.pth").write_bytes(b"not a model")
    (model_dir / "data" / "pickle_module_info.txt").write_text("evilmod")
    rewrite_digest_tag(name, version, tmp_path)

    out = tmp_path / "out"
    done = ganforge(
        "generate", "--model", f"models:/{name}/{version}", "--out", str(out), "-n", "2", home=home, cwd=ROOT
    )
    assert not marker.exists(), "the bundled module ran inside ganforge generate"
    assert_refused(done, f"refusing to load models:/{name}/{version}", "folder 'code'", "register the model again")
    assert not out.exists()

    # Control: MLflow's own loader on the same files runs the payload (then refuses the pickle).
    control = tmp_path / "control"
    shutil.copytree(model_dir, control)
    code = (
        f"import mlflow.pytorch\ntry:\n    mlflow.pytorch.load_model({str(control)!r})\nexcept Exception:\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", code], env=serving_env(home), capture_output=True, timeout=240)
    assert marker.read_text() == "payload ran"


def test_an_edited_loader_module_is_refused_before_serving_loads_it(store, home, tmp_path):
    """The pyfunc ``loader_module`` edited to a bundled module: ``mlflow.pyfunc.load_model`` (the
    serving path) imports it. ``ganforge verify-model`` — the step the README's serving recipe runs
    first — refuses it with the tag untouched (digest) and with the tag rewritten (content) (the
    same check as ``generate``'s); nothing is written and the payload never runs."""
    name = "trust-loader"
    version = register_tiny(name)
    model_dir = stored_model_dir(name, version)
    marker = tmp_path / "payload-ran"
    plant_module(model_dir, marker)
    edit_mlmodel(model_dir, lambda flavors: flavors["python_function"].update(loader_module="evilmod", code="code"))
    uri = f"models:/{name}/{version}"

    served = tmp_path / "served"
    done = ganforge("verify-model", uri, "--out", str(served), home=home, cwd=tmp_path)
    assert_refused(done, "do not match the sha256 recorded at registration")
    rewrite_digest_tag(name, version, tmp_path)
    done = ganforge("verify-model", uri, "--out", str(served), home=home, cwd=tmp_path)
    assert_refused(done, f"refusing to load {uri}", "'code'", "register the model again")
    assert not marker.exists() and not served.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redigest"]  # no temporary left beside --out

    # Control: MLflow's pyfunc loader, pointed at the registry, runs the payload.
    code = ISOLATED_PRELUDE.format(site=str(SITE_PACKAGES)) + f"import mlflow\nmlflow.pyfunc.load_model({uri!r})\n"
    isolated_python(code, serving_env(home), tmp_path)
    assert marker.read_text() == "payload ran"


@pytest.fixture(scope="module")
def clean_model(home, tmp_path_factory) -> Path:
    """The files of one registered version, as downloaded (the content rules' input)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFORGE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure()
        version = register_tiny("trust-clean")
        local = tmp_path_factory.mktemp("clean-model")
        return Path(registry.quiet_download(f"models:/trust-clean/{version}", str(local)))


def _yaml_edit(name: str, edit):
    def apply(root: Path) -> None:
        doc = yaml.safe_load((root / name).read_text())
        edit(doc)
        (root / name).write_text(yaml.safe_dump(doc))

    return apply


EDITS = {
    "a .py file": (lambda root: (root / "data" / "hook.py").write_text(""), "file 'data/hook.py'"),
    "pickle format": (lambda root: (root / "data" / "model.pth").write_bytes(b""), "file 'data/model.pth'"),
    "a link": (lambda root: (root / "extra").symlink_to(root / "MLmodel"), "link 'extra'"),
    "no archive": (lambda root: (root / "data" / "model.pt2").unlink(), "no data/model.pt2"),
    "pyfunc code": (
        _yaml_edit("MLmodel", lambda m: m["flavors"]["python_function"].update(code="data")),
        "bundles code",
    ),
    "loader_module": (
        _yaml_edit("MLmodel", lambda m: m["flavors"]["python_function"].update(loader_module="mlflow.sklearn")),
        "loader_module 'mlflow.sklearn'",
    ),
    "another flavor": (
        _yaml_edit("MLmodel", lambda m: m["flavors"].update(sklearn={"pickled_model": "data"})),
        "flavors are ['python_function', 'pytorch', 'sklearn']",
    ),
    "no pytorch flavor": (
        _yaml_edit("MLmodel", lambda m: m["flavors"].pop("pytorch")),
        "flavors are ['python_function']",
    ),
    "model code path": (
        _yaml_edit("MLmodel", lambda m: m["flavors"]["python_function"].update(model_code_path="data/model.pt2")),
        "keys ['model_code_path']",
    ),
    "data elsewhere": (
        _yaml_edit("MLmodel", lambda m: m["flavors"]["python_function"].update(data="..")),
        "other than 'data'",
    ),
    "pickle module": (
        _yaml_edit("MLmodel", lambda m: m["flavors"]["python_function"].update(pickle_module_name="evilmod")),
        "pickle_module_name 'evilmod'",
    ),
    "extra requirement": (
        lambda root: (root / "requirements.txt").write_text("torch==2.0\nevil-package==1.0\n"),
        "requirements.txt asks for packages",
    ),
    "conda channel": (
        _yaml_edit("conda.yaml", lambda c: c.update(channels=["https://evil.example/conda"])),
        "conda.yaml asks for channels",
    ),
}


def test_the_content_rules_accept_what_ganforge_registers_and_nothing_else(clean_model, tmp_path):
    model_files.check_model_dir(clean_model, "models:/trust-clean/1")  # what register_generator wrote passes
    conditional = tmp_path / "conditional"  # a program of (z, labels): MLflow logs no pyfunc flavor
    shutil.copytree(clean_model, conditional)
    _yaml_edit("MLmodel", lambda m: m["flavors"].pop("python_function"))(conditional)
    model_files.check_model_dir(conditional, "models:/trust-clean/1")
    for label, (edit, needle) in EDITS.items():
        root = tmp_path / label.replace(" ", "-")
        shutil.copytree(clean_model, root)
        edit(root)
        with pytest.raises(model_files.ModelContentError, match="refusing to load models:/x/1") as refused:
            model_files.check_model_dir(root, "models:/x/1")
        assert needle in str(refused.value), (label, str(refused.value))
