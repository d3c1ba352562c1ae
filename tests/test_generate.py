"""`ganforge generate`: grids, single images, slerp interpolations and WAVs from registered
models and checkpoints, reproducible by seed, written atomically; real sqlite MLflow store."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cli_env
from ganforge import cli
from ganforge.config import build_config
from ganforge.errors import OutputPathError
from ganforge.generate import GenerationError, generate_to_dir, interpolation_latents, png_bytes, slerp, tile_grid
from ganforge.models import build_models
from ganforge.platform import registry, tracking
from ganforge.train import train

N, STEPS = 10, 5
ROWS = N // 2  # interpolation rows for n=10
TILE = 28 + 2  # a 28-px image plus make_grid's 2-px gutter


def point_store_at(home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("GANFORGE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure()


@pytest.fixture(scope="module")
def store_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generate-home")


@pytest.fixture
def store(store_home, monkeypatch) -> Path:
    point_store_at(store_home, monkeypatch)
    return store_home


@pytest.fixture(scope="module")
def dcgan(store_home, fashion_train, tmp_path_factory) -> dict:
    """A tiny DCGAN trained 2 steps on real Fashion-MNIST, registered as dcgan v1 and promoted to champion."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        point_store_at(store_home, mp)
        cfg = build_config("dcgan", "tiny", {"train": {"max_steps": 2}})
        out = tmp_path_factory.mktemp("dcgan-run")
        result = train(cfg, fashion_train, out)
        run_id = tracking.start_pipeline_run(cfg)
        version = registry.register_generator(run_id, result.models["G_ema"], cfg, {"fid": 300.0}, tags={})
        decision = registry.promote(cfg.model_name, version, margin=0.0)
    assert decision["alias"] == registry.CHAMPION
    return {"name": cfg.model_name, "version": version, "checkpoint": result.checkpoint}


@pytest.fixture(scope="module")
def wavegan(store_home) -> dict:
    """An untrained tiny WaveGAN generator (seeded), registered as a version of ``wavegan``:
    generation does not care how good the weights are, only that they and the config travel."""
    with pytest.MonkeyPatch.context() as mp:
        point_store_at(store_home, mp)
        cfg = build_config("wavegan", "tiny")
        torch.manual_seed(0)
        generator, _ = build_models(cfg.model, cfg.data)
        run_id = tracking.start_pipeline_run(cfg)
        version = registry.register_generator(run_id, generator, cfg, {}, tags={})
    return {"name": cfg.model_name, "version": version}


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`python -m ganforge.cli generate …` in a fresh process on the same sqlite store."""
    env = cli_env(GANFORGE_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "ganforge.cli", "generate", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def generate_in_fresh_process(model: str, out: Path, home: Path, *extra: str) -> dict:
    done = run_cli("--model", model, "--out", str(out), *extra, home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def grid_tile(grid: np.ndarray, row: int, col: int, side: int = 28) -> np.ndarray:
    top, left = 2 + row * (side + 2), 2 + col * (side + 2)
    return grid[top : top + side, left : left + side]


def test_champion_generates_grid_images_and_interpolations_reproducibly(dcgan, store, tmp_path):
    uri = f"models:/{dcgan['name']}@champion"
    first = generate_in_fresh_process(
        uri, tmp_path / "a", store, "-n", str(N), "--interpolate", str(STEPS), "--seed", "7"
    )
    # The same seed in another process (this one) gives the same bytes; another seed differs.
    generate_to_dir(uri, tmp_path / "b", n=N, seed=7, interpolate=STEPS)
    generate_to_dir(uri, tmp_path / "c", n=N, seed=8, interpolate=STEPS)

    assert {Path(p) for p in first.values()} == {
        tmp_path / "a" / name for name in ("grid.png", "images", "interpolation.png", "generation.json")
    }
    cols = math.ceil(math.sqrt(N))
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.size == (cols * TILE + 2, math.ceil(N / cols) * TILE + 2) and grid.mode == "L"
    singles = sorted((tmp_path / "a" / "images").glob("*.png"))
    assert [p.name for p in singles] == [f"{i:05d}.png" for i in range(N)]
    assert all(Image.open(p).size == (28, 28) for p in singles)
    interpolation = Image.open(tmp_path / "a" / "interpolation.png")
    assert interpolation.size == (STEPS * TILE + 2, ROWS * TILE + 2)

    # The grid tiles are the single images, and row r of the interpolation runs from sample 2r to 2r+1.
    grid_pixels, path_pixels = pixels(tmp_path / "a" / "grid.png"), pixels(tmp_path / "a" / "interpolation.png")
    for i in range(N):
        assert np.array_equal(grid_tile(grid_pixels, *divmod(i, cols)), pixels(singles[i]))
    for r in range(ROWS):
        # G runs on a different batch here, so float rounding may move a pixel by one level.
        assert np.abs(grid_tile(path_pixels, r, 0) - pixels(singles[2 * r])).max() <= 1
        assert np.abs(grid_tile(path_pixels, r, STEPS - 1) - pixels(singles[2 * r + 1])).max() <= 1
    assert not np.array_equal(grid_tile(path_pixels, 0, STEPS // 2), pixels(singles[0]))

    manifest = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert manifest["model"] == uri and manifest["version"] == dcgan["version"] and manifest["name"] == dcgan["name"]
    assert (manifest["seed"], manifest["n"], manifest["interpolate"], manifest["nz"], manifest["kind"]) == (
        7,
        N,
        STEPS,
        100,
        "image",
    )
    assert manifest["files"] == sorted(["grid.png", "interpolation.png", *(f"images/{i:05d}.png" for i in range(N))])

    same, other = tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert tree_bytes(tmp_path / "a") == same
    assert same["grid.png"] != other["grid.png"] and same["interpolation.png"] != other["interpolation.png"]
    assert all(same[f"images/{i:05d}.png"] != other[f"images/{i:05d}.png"] for i in range(N))


def test_checkpoint_and_registered_version_generate_the_same_samples(dcgan, store, tmp_path):
    from_checkpoint = generate_to_dir(str(dcgan["checkpoint"]), tmp_path / "ckpt", n=6, seed=3)
    from_registry = generate_to_dir(f"models:/{dcgan['name']}/{dcgan['version']}", tmp_path / "reg", n=6, seed=3)
    # Same EMA weights and latents; memory layout may differ (channels_last in training), so allow one level.
    assert np.abs(pixels(from_checkpoint["grid"]) - pixels(from_registry["grid"])).max() <= 1
    assert json.loads(from_checkpoint["manifest"].read_text())["version"] is None


def test_existing_out_dir_is_replaced_only_on_success(dcgan, store, tmp_path):
    out = tmp_path / "out"
    generate_to_dir(f"models:/{dcgan['name']}@champion", out, n=3)
    earlier = tree_bytes(out)
    with pytest.raises(registry.RegistryError, match="no alias 'nope'"):
        generate_to_dir(f"models:/{dcgan['name']}@nope", out, n=2)
    assert tree_bytes(out) == earlier
    generate_to_dir(f"models:/{dcgan['name']}@champion", out, n=2)
    assert sorted(p.name for p in out.iterdir()) == ["generation.json", "grid.png", "images"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png", "00001.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_unknown_alias_names_the_model_and_lists_its_aliases(dcgan, store, tmp_path):
    with pytest.raises(registry.RegistryError) as e:
        generate_to_dir(f"models:/{dcgan['name']}@best", tmp_path / "out", n=2)
    assert repr(dcgan["name"]) in str(e.value) and "champion → v1" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_model_lists_known_models(dcgan, store, tmp_path):
    with pytest.raises(registry.RegistryError, match=r"no registered model named 'dcgn'.*'dcgan'"):
        generate_to_dir("models:/dcgn@champion", tmp_path / "out", n=2)


def test_missing_version_lists_versions(dcgan, store, tmp_path):
    with pytest.raises(registry.RegistryError, match=r"no version 99; versions: \[1\]"):
        generate_to_dir(f"models:/{dcgan['name']}/99", tmp_path / "out", n=2)


@pytest.mark.parametrize(
    "model, message",
    [
        ("models:/dcgan", "models:/NAME@ALIAS"),
        ("does/not/exist/checkpoint.pt", "no checkpoint at does/not/exist/checkpoint.pt"),
    ],
)
def test_bad_model_reference_says_what_to_pass(model, message, tmp_path):
    with pytest.raises(GenerationError, match=message):
        generate_to_dir(model, tmp_path / "out", n=2)


@pytest.mark.parametrize("n, interpolate, message", [(0, 0, "n=0"), (-3, 0, "n=-3"), (4, 1, "K >= 2")])
def test_bad_counts_are_refused_before_loading(n, interpolate, message, tmp_path):
    with pytest.raises(GenerationError, match=message):
        generate_to_dir("models:/any@champion", tmp_path / "out", n=n, interpolate=interpolate)


def test_out_dir_holding_the_checkpoint_is_refused(dcgan, tmp_path):
    with pytest.raises(OutputPathError, match="is a folder holding the input .*checkpoint.pt.*Fix: choose a separate"):
        generate_to_dir(str(dcgan["checkpoint"]), dcgan["checkpoint"].parent, n=2)
    with pytest.raises(OutputPathError, match="is a folder holding the input"):  # a parent of it, too
        generate_to_dir(str(dcgan["checkpoint"]), dcgan["checkpoint"].parent.parent, n=2)
    assert dcgan["checkpoint"].is_file()


def test_folder_with_a_users_file_is_never_replaced(dcgan, tmp_path, capsys):
    """--out replaces only an earlier generate output (its generation.json lists every file)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    status = cli.main(["generate", "--model", str(dcgan["checkpoint"]), "-n", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"--out {out} is a non-empty folder that is not an earlier ganforge generate output" in err and "Fix:" in err
    assert (out / "notes.txt").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # An earlier output is replaced; one that also holds a user's file is not.
    (out / "notes.txt").unlink()
    generate_to_dir(str(dcgan["checkpoint"]), out, n=2)
    (out / "images" / "mine.png").write_bytes(b"a user's image")
    with pytest.raises(OutputPathError, match=r"holds .*images/mine\.png, which the earlier ganforge generate output"):
        generate_to_dir(str(dcgan["checkpoint"]), out, n=3)
    assert (out / "images" / "mine.png").read_bytes() == b"a user's image"
    assert json.loads((out / "generation.json").read_text())["n"] == 2


def test_cli_reports_a_missing_checkpoint_without_a_traceback(tmp_path, capsys):
    status = cli.main(["generate", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "ganforge generate: error: no checkpoint at" in capsys.readouterr().err


def test_registered_wavegan_writes_16_bit_mono_wavs(wavegan, store_home, tmp_path):
    uri = f"models:/{wavegan['name']}/{wavegan['version']}"
    written = generate_in_fresh_process(uri, tmp_path / "a", store_home, "-n", "3", "--interpolate", "3")
    assert set(written) == {"wavs", "spectrograms", "interpolation", "interpolation_spectrograms", "manifest"}
    wavs = sorted((tmp_path / "a" / "wavs").glob("*.wav"))
    steps = sorted((tmp_path / "a" / "interpolation").glob("*.wav"))
    assert len(wavs) == 3 and len(steps) == 3  # n=3 → one interpolation row of 3 steps
    for path in wavs + steps:
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16384)
            assert np.abs(np.frombuffer(w.readframes(16384), "<i2")).max() > 0
    assert Image.open(tmp_path / "a" / "spectrograms.png").size[0] > 0
    manifest = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert (manifest["kind"], manifest["sample_rate"], manifest["version"]) == ("audio", 16000, wavegan["version"])
    assert wavs[0].read_bytes() != wavs[1].read_bytes()


def test_slerp_keeps_latents_on_the_gaussian_shell_and_hits_the_endpoints():
    g = torch.Generator().manual_seed(0)
    nz = 512
    a, b = torch.randn(4, nz, generator=g), torch.randn(4, nz, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 9))
    assert torch.equal(path[:, 0], a) and torch.allclose(path[:, -1], b, atol=1e-5)
    middle = path[:, 4].norm(dim=1)
    straight_middle = ((a + b) / 2).norm(dim=1)
    assert torch.all((middle / math.sqrt(nz) - 1).abs() < 0.1)  # slerp stays near √nz
    assert torch.all(straight_middle / math.sqrt(nz) < 0.8)  # a straight line falls inside the shell


def test_slerp_of_parallel_latents_is_the_straight_line():
    a = torch.ones(1, 8)
    path = slerp(a, 3 * a, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(path).all() and torch.allclose(path[0, 1], 2 * a[0])


def test_interpolation_rows_pair_consecutive_latents():
    endpoints = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    rows = interpolation_latents(endpoints, 5).reshape(2, 5, 16)
    assert torch.equal(rows[0, 0], endpoints[0]) and torch.equal(rows[1, 0], endpoints[2])
    assert torch.allclose(rows[0, -1], endpoints[1], atol=1e-5) and torch.allclose(rows[1, -1], endpoints[3], atol=1e-5)


def test_tile_grid_places_colour_tiles_row_major_between_black_gutters():
    images = torch.stack([torch.full((3, 4, 5), 10 * (i + 1), dtype=torch.uint8) for i in range(3)])
    grid = tile_grid(images, ncol=2)
    assert grid.shape == (3, 2 * 6 + 2, 2 * 7 + 2)
    assert grid[:, 2:6, 2:7].eq(10).all() and grid[:, 2:6, 9:14].eq(20).all() and grid[:, 8:12, 2:7].eq(30).all()
    assert grid[:, 8:12, 9:14].eq(0).all() and grid[:, :2].eq(0).all()  # the missing 4th tile and gutters stay black
    decoded = Image.open(io.BytesIO(png_bytes(grid)))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), grid.permute(1, 2, 0).numpy())


def test_out_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(OutputPathError, match="is a file; ganforge generate writes a directory there"):
        generate_to_dir("models:/any@champion", tmp_path / "out", n=2)
    assert (tmp_path / "out").read_text() == "not a directory"
