"""StyleGAN's truncation and style mixing from the registry, pixel-equal to the checkpoint.

Real parts only: a tiny stylegan (seeded, with a non-zero w_avg and noise strengths, so truncation and noise
show) written as a snapshot and registered by ganforge's own step into a sqlite MLflow store; ``ganforge
generate`` from ``models:/stylegan@champion`` and from the snapshot compared file by file; MLflow's pyfunc on
the verified copy with the ``truncation`` inference parameter; the README's command run as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, cli_env
from ganforge import cli
from ganforge.checkpoint import write_snapshot
from ganforge.config import build_config
from ganforge.generate import generate_to_dir
from ganforge.models import build_models
from ganforge.platform import model_files, registry, tracking

CHAMPION = "models:/stylegan@champion"


def point_store_at(home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("GANFORGE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure()


class PlainGenerator(torch.nn.Module):
    """G(z) alone, as versions were registered before the mapping and synthesis programs."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stylegan-registry-home")


@pytest.fixture
def store(home, monkeypatch) -> Path:
    point_store_at(home, monkeypatch)
    return home


@pytest.fixture(scope="module")
def stylegan(home, tmp_path_factory) -> dict:
    """Version 1: registered by this ganforge and promoted to champion; version 2: G(z) alone (the old form)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = build_config("stylegan", "tiny")
    torch.manual_seed(0)
    G, _ = build_models(cfg.model, cfg.data)
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # a trained G's mean w is not 0; truncation must move towards this one
        for module in G.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.1)
    G.eval()
    run_dir = tmp_path_factory.mktemp("stylegan-run")
    write_snapshot(run_dir, G_ema=G, step=1, epoch=1, cfg=cfg)
    with pytest.MonkeyPatch.context() as mp:
        point_store_at(home, mp)
        version = registry.register_generator(tracking.start_pipeline_run(cfg), G, cfg, {"fid": 100.0}, tags={})
        assert registry.promote(cfg.model_name, version, margin=0.0)["alias"] == registry.CHAMPION
        old = registry.register_generator(tracking.start_pipeline_run(cfg), PlainGenerator(G), cfg, {}, tags={})
    torch.set_num_threads(before)
    return {"G": G, "cfg": cfg, "version": version, "old": old, "snapshot": run_dir / "snapshots" / "epoch_001.pt"}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_outputs(registered: Path, checkpoint: Path) -> None:
    """Every file byte-equal, the manifests equal but for where the model came from."""
    a, b = files(registered), files(checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        if name != "generation.json":
            assert a[name] == b[name], name
    provenance = ("model", "name", "version", "run_id")
    manifest_a, manifest_b = (json.loads(x["generation.json"]) for x in (a, b))
    assert {k: v for k, v in manifest_a.items() if k not in provenance} == {
        k: v for k, v in manifest_b.items() if k not in provenance
    }


@pytest.mark.parametrize(
    "truncation, mix_seed, layers", [(0.7, 1, "fine"), (1.0, 3, "middle"), (0.5, None, "coarse"), (0.0, 2, "coarse")]
)
def test_registered_stylegan_truncates_and_mixes_like_its_checkpoint(
    stylegan, store, tmp_path, truncation, mix_seed, layers
):
    options = {"n": 5, "seed": 4, "interpolate": 3, "truncation": truncation, "mix_seed": mix_seed}
    registered = generate_to_dir(CHAMPION, tmp_path / "registered", mix_layers=layers, **options)
    generate_to_dir(str(stylegan["snapshot"]), tmp_path / "checkpoint", mix_layers=layers, **options)
    assert ("mixing" in registered) == (mix_seed is not None)
    same_outputs(tmp_path / "registered", tmp_path / "checkpoint")
    assert json.loads(registered["manifest"].read_text())["version"] == stylegan["version"]
    if truncation != 1:  # a control: the option changes the pixels, so equal files compare something
        plain = generate_to_dir(CHAMPION, tmp_path / "plain", n=5, seed=4)
        assert plain["grid"].read_bytes() != registered["grid"].read_bytes()


def test_pyfunc_takes_truncation_as_an_inference_parameter(stylegan, store, tmp_path):
    """What a server does: the verified copy loaded by MLflow alone, pickle refused, ψ as a request parameter."""
    import mlflow

    registry.save_verified(CHAMPION, tmp_path / "served")
    with registry.pickle_deserialization_disallowed():
        model = mlflow.pyfunc.load_model(str(tmp_path / "served"))
    (param,) = model.metadata.get_params_schema().params
    assert (param.name, param.dtype.name, param.default) == ("truncation", "double", 1.0)
    G = stylegan["G"]
    z = np.random.default_rng(1).standard_normal((3, G.nz)).astype(np.float32)
    with torch.no_grad():
        at_07, at_1 = (G(torch.from_numpy(z), truncation_psi=psi).numpy() for psi in (0.7, 1.0))
    assert np.array_equal(model.predict(z, params={"truncation": 0.7}), at_07)
    assert np.array_equal(model.predict(z), at_1)
    assert not np.array_equal(at_07, at_1)


def test_a_stylegan_version_holds_exactly_its_three_programs(stylegan, store, tmp_path):
    local = Path(registry.quiet_download(f"models:/stylegan/{stylegan['version']}", str(tmp_path / "v")))
    stored = set(files(local)) - model_files.CLIENT_WRITTEN_FILES
    assert stored == model_files.MODEL_FILES | set(model_files.STYLE_FILES)
    meta = yaml.safe_load((local / "MLmodel").read_text())["metadata"]
    assert meta["style_layer_sides"] == stylegan["G"].style_layer_sides
    model_files.check_model_dir(local, "v")  # what registration wrote passes the content rules
    for change, message in (
        (lambda d: (d / "data" / "synthesis.pt2").unlink(), "without data/synthesis.pt2"),
        (lambda d: (d / "data" / "mapping.pt2").unlink(), "without data/mapping.pt2"),
        (lambda d: shutil.copy(d / "data" / "mapping.pt2", d / "data" / "extra.pt2"), "'data/extra.pt2'"),
    ):
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(local, copy)
        change(copy)
        with pytest.raises(model_files.ModelContentError, match=re.escape(message)):
            model_files.check_model_dir(copy, "v")


def test_a_version_registered_as_g_of_z_alone_names_the_fix(stylegan, store, tmp_path, capsys):
    old = f"models:/stylegan/{stylegan['old']}"
    for option in (["--truncation", "0.7"], ["--mix-seed", "1"]):
        capsys.readouterr()
        status = cli.main(["generate", "--model", old, *option, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1, err
        assert f"{old} (version {stylegan['old']}) was registered as G(z) at ψ = 1 alone" in err[0]
        assert "register it again from its checkpoint.pt" in err[0]
    assert not (tmp_path / "out").exists()
    plain = generate_to_dir(old, tmp_path / "plain", n=5, seed=4)  # ψ = 1 still works, with the same pixels
    champion = generate_to_dir(CHAMPION, tmp_path / "champion", n=5, seed=4)
    assert plain["grid"].read_bytes() == champion["grid"].read_bytes()


def test_readme_command_for_the_champion_runs_as_written(stylegan, home, tmp_path):
    section = (ROOT / "README.md").read_text().split("## StyleGAN: `stylegan`", 1)[1].split("\n## ", 1)[0]
    (line,) = [x for x in section.splitlines() if x.startswith(f"ganforge generate --model {CHAMPION} --truncation")]
    env = cli_env(GANFORGE_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "samples" / "champion-mix"
    manifest = json.loads((out / "generation.json").read_text())
    assert (manifest["model"], manifest["version"], manifest["truncation"]) == (CHAMPION, stylegan["version"], 0.7)
    assert (manifest["mix_seed"], manifest["mix_layers"], manifest["n"]) == (1, "fine", 6)
    options = {"truncation": 0.7, "mix_seed": 1, "mix_layers": "fine", "n": 6}
    generate_to_dir(str(stylegan["snapshot"]), tmp_path / "from-checkpoint", **options)
    same_outputs(out, tmp_path / "from-checkpoint")


def test_a_pickle_planted_in_the_mapping_program_is_never_run(stylegan, store, tmp_path):
    """MLflow's loader checks model.pt2 alone; ganforge checks mapping.pt2 and synthesis.pt2 pickle-free
    too, also when the writer of the files rewrote the digest tag to match. Control: torch.export.load runs it."""
    from mlflow import MlflowClient

    from test_serving import plant_payload, stored_archive

    cfg = stylegan["cfg"]
    version = registry.register_generator(tracking.start_pipeline_run(cfg), stylegan["G"], cfg, {}, tags={})
    mapping = stored_archive(cfg.model_name, version).parent / "mapping.pt2"
    marker = tmp_path / "payload-ran"
    plant_payload(mapping, marker)
    local = Path(registry.quiet_download(f"models:/stylegan/{version}", str(tmp_path / "download")))
    MlflowClient().set_model_version_tag(
        "stylegan", str(version), registry.ARTIFACT_SHA256_TAG, registry.artifact_digest(local)
    )
    uri = f"models:/stylegan/{version}"
    with pytest.raises(
        registry.RegistryError, match=r"refusing to load .*data/mapping.pt2: .*not a pickle-free payload"
    ):
        generate_to_dir(uri, tmp_path / "out", n=2, truncation=0.7)
    with pytest.raises(registry.RegistryError, match="data/mapping.pt2"):
        registry.save_verified(uri, tmp_path / "served")
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "served").exists()
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.export.load({str(mapping)!r})"], capture_output=True, timeout=240
    )
    assert marker.read_text() == "payload ran"
