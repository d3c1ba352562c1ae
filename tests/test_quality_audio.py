"""WaveGAN's quality row at tiny size: `evaluate --run` of an audio run writes eval_audio/ (spectrogram grids of
generated and real clips, WAVs of the scored samples) and logs it to the run's MLflow run; the renderer turns
those MLflow runs into docs/quality.md's wavegan table."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, cli_env
from ganforge.cli import main as ganforge

sys.path.insert(0, str(ROOT / "benchmarks"))
import render_quality  # noqa: E402

RENDERER = ROOT / "benchmarks" / "render_quality.py"


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A tiny wavegan run trained with --mlflow and evaluated with `evaluate --run` (the quality target's two
    commands at tiny size), in its own GANFORGE_HOME. Returns (home, run dir, data dir, metrics)."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GANFORGE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    data, run = home / "data" / "sc09" / "train", home / "quality" / "wavegan-tiny"
    common = ["--preset", "wavegan", "--profile", "tiny"]
    assert ganforge(["prep", *common, "--split", "train", "--out", str(data)]) == 0
    assert ganforge(["train", *common, "--data", str(data), "--out", str(run), "--mlflow"]) == 0
    assert ganforge(["evaluate", "--run", str(run), "--data", str(data), "--n", "32"]) == 0
    yield home, run, data, json.loads((run / "metrics.json").read_text())
    mp.undo()


def test_evaluate_of_an_audio_run_writes_and_logs_eval_audio(scored_run):
    import torch

    from ganforge.checkpoint import generator_from_checkpoint, read_checkpoint
    from ganforge.evaluate import sample_for_eval
    from ganforge.platform import tracking

    home, run, _, metrics = scored_run
    audio = run / "eval_audio"
    wavs = sorted((audio / "wavs").iterdir())
    assert [p.name for p in wavs] == [f"sample_{i:04d}.wav" for i in range(8)]
    for name in ("generated.png", "real.png"):
        with Image.open(audio / name) as image:  # 16 clips, 8 to a row: two rows of spectrograms
            assert image.format == "PNG" and image.size[0] > 2 * image.size[1] > 0
    with Image.open(audio / "generated.png") as g, Image.open(audio / "real.png") as r:
        assert np.asarray(g).tobytes() != np.asarray(r).tobytes()
    # the WAVs are the scored samples: the evaluation's latent draw through the final EMA generator
    ckpt_path = run / "checkpoint.pt"
    G, cfg = generator_from_checkpoint(read_checkpoint(ckpt_path), ckpt_path, ema=True, device="cpu")
    with torch.no_grad():
        expected = sample_for_eval(G, cfg, 8).numpy()[:, 0]
    for path, clip in zip(wavs, expected):
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert np.abs(pcm / 32767.0 - clip).max() < 2e-4

    run_id = (run / "mlflow_run_id").read_text().strip()
    tracking.configure(str(home))
    client = tracking.client()
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "eval_audio")}
    assert logged == {"generated.png", "real.png", "wavs"}
    assert len(client.list_artifacts(run_id, "eval_audio/wavs")) == 8
    scores = client.get_run(run_id).data.metrics
    for key in ("inception_score", "fid", "real_inception_score", "real_fid_ceiling", "classifier_accuracy"):
        assert scores[key] == pytest.approx(metrics[key]), key


def _render(home: Path, doc: Path, profile: str = "tiny") -> subprocess.CompletedProcess:
    env = cli_env(GANFORGE_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(RENDERER), "--doc", str(doc), "--profile", profile],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_renderer_writes_the_logged_scores_between_the_markers(scored_run, tmp_path):
    home, run, _, metrics = scored_run
    shipped = (ROOT / "docs" / "quality.md").read_text()
    doc = tmp_path / "quality.md"
    doc.write_text(shipped)
    done = _render(home, doc)
    assert done.returncode == 0, done.stderr
    page = doc.read_text()
    head, table = page.split(render_quality.BEGIN)
    table, tail = table.split(render_quality.END)
    assert head == shipped.split(render_quality.BEGIN)[0] and tail == shipped.split(render_quality.END)[1]
    (row,) = [line for line in table.splitlines() if line.startswith("| 0 |")]
    assert f"{metrics['inception_score']:.2f} ± {metrics['inception_score_std']:.2f}" in row
    assert f"({metrics['real_inception_score']:.2f} ± " in row and f"| {metrics['fid']:.1f} (" in row
    assert f"({metrics['real_fid_ceiling']:.1f}, N = {metrics['real_fid_ceiling_n']}; " in row
    assert f"{metrics['step']} G steps" in row and (run / "mlflow_run_id").read_text()[:8] in row
    assert "generated.png, real.png, 8 WAVs" in row and "`make quality PIPELINE=wavegan`" in row
    # rendering again changes nothing: the block is replaced, not appended to
    assert _render(home, doc).returncode == 0 and doc.read_text() == page


def test_renderer_without_runs_or_markers_leaves_the_page_and_says_what_to_do(scored_run, tmp_path):
    home, *_ = scored_run
    doc = tmp_path / "quality.md"
    doc.write_text(original := (ROOT / "docs" / "quality.md").read_text())
    done = _render(home, doc, profile="quality")  # this store has only a tiny run
    assert done.returncode == 2 and "no finished, scored wavegan/quality run" in done.stderr
    assert "make quality PIPELINE=wavegan" in done.stderr and doc.read_text() == original
    doc.write_text(no_markers := original.replace(render_quality.END, ""))
    done = _render(home, doc)
    assert done.returncode == 2 and render_quality.END in done.stderr and doc.read_text() == no_markers


def test_only_runs_of_the_profile_itself_make_its_rows():
    from ganforge.config import build_config
    from ganforge.platform.tracking import param_value

    params = {k: param_value(v) for k, v in build_config("wavegan", "quality", ["train.seed=1"]).flat().items()}
    assert render_quality.is_the_profile(params, "quality", 1)
    assert not render_quality.is_the_profile(params, "quality", 0)  # the seed is read from the run, not assumed
    assert not render_quality.is_the_profile({**params, "train.epochs": "30"}, "quality", 1)  # SET="train.epochs=30"
    assert not render_quality.is_the_profile(params, "tiny", 1)
