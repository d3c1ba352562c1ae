"""`ganforge serve`: a registered model answers real HTTP requests from a real server process.

Real parts only: a sqlite MLflow store with tiny seeded generators registered by
``registry.register_generator`` (as tests/test_serving.py does), the README's `ganforge serve` line
run through a shell exactly as written, MLflow's own scoring server (uvicorn) on 127.0.0.1, real
POSTs to /invocations, SIGTERM to the serve process, and a real pickle payload planted in a stored
model. Image-to-image presets (cyclegan; pix2pix as soon as it is a preset) send images and get images.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import ROOT, cli_env
from ganforge.config import PRESETS, build_config
from ganforge.models import build_models
from ganforge.platform import registry, serving, tracking
from test_serving import plant_payload, register, stored_archive

README_LINE = "ganforge serve --model models:/dcgan@champion --port 5001"
IMAGE_TO_IMAGE = [p for p in sorted(PRESETS) if build_config(p, "tiny").model.arch in ("cyclegan", "pix2pix")]
"""Presets served images in → images out: cyclegan and the pix2pix editing presets."""
START_TIMEOUT_S = 240.0
PORT_LOCK = Path("/tmp/ganforge-test-port-5001.lock")
"""Serialises the README line's fixed port between concurrent test sessions on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def image_program(preset: str, cfg) -> torch.nn.Module:
    """What ``preset`` registers: cyclegan both directions as one program; any other image-to-image
    preset (pix2pix) its generator as a whole editing step, degraded images in → edited images out."""
    if preset == "cyclegan":
        from ganforge.cyclegan import CycleTranslator

        return CycleTranslator(build_models(cfg.model, cfg.data)[0], build_models(cfg.model, cfg.data)[0])
    from ganforge.pix2pix import as_editor

    return as_editor(build_models(cfg.model, cfg.data)[0], cfg)


def register_translator(preset: str, fid: float) -> dict:
    """A seeded, untrained image-to-image program of ``preset`` (tiny), registered as champion."""
    cfg = build_config(preset, "tiny")
    torch.manual_seed(0)
    program = image_program(preset, cfg).eval()
    version = registry.register_generator(tracking.start_pipeline_run(cfg), program, cfg, {"fid": fid}, tags={})
    assert registry.promote(cfg.model_name, version, margin=0.0)["alias"] == "champion"
    return {"cfg": cfg, "generator": program, "version": version, "name": cfg.model_name}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def champions(home) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFORGE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure()
        found = {"dcgan": register("dcgan", 80.0)}
        found.update({p: register_translator(p, 20.0) for p in IMAGE_TO_IMAGE})
        return found


def serve_env(home: Path, tmp: Path, path: str) -> dict:
    """This checkout's ganforge, the module's store, TMPDIR under the test (to see the copy go), ``path``."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = cli_env(GANFORGE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", TMPDIR=str(tmp))
    env["PATH"] = path
    return env


@contextlib.contextmanager
def running(cmd, env: dict, cwd: Path, port: int, log: Path):
    """The serve process, once /ping answers on ``port``; SIGTERM'd (if still running) when the block ends."""
    with log.open("w") as err:
        # A line runs through bash, which execs a lone command: the signals below reach ganforge itself.
        shell = {"shell": True, "executable": "/bin/bash"} if isinstance(cmd, str) else {}
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True, **shell)
    try:
        if shell:
            time.sleep(1)
            assert b"ganforge" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), "bash did not exec the line"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, f"no /ping answer in {START_TIMEOUT_S} s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def post(port: int, inputs: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": inputs.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return np.asarray(json.load(response)["predictions"], dtype=np.float32)


def expected_output(champion: dict, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return champion["generator"](torch.from_numpy(inputs)).numpy()


def stopped_cleanly(proc: subprocess.Popen, port: int, tmp: Path, log: Path) -> None:
    """SIGTERM → exit 143, nothing left listening, the temporary model copy removed."""
    assert [p.name for p in tmp.iterdir() if p.name.startswith("ganforge-serve-")], "no private copy while serving"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 143, log.read_text()[-3000:]
    assert "the server is stopped and its model copy removed" in log.read_text()
    assert not listening(port)
    assert not list(tmp.iterdir()), sorted(p.name for p in tmp.iterdir())


def docs_request_block() -> str:
    """The ```python block of docs/cli.md's "Serving over HTTP" section."""
    section = (ROOT / "docs" / "cli.md").read_text().split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_line_serves_the_champion_and_the_docs_request_gets_images(champions, home, tmp_path):
    """The README's line, through a shell as written (ganforge on PATH); the docs' request block run
    as written against it gives the champion's images for its latents; SIGTERM ends it cleanly."""
    readme = (ROOT / "README.md").read_text()
    assert f"`{README_LINE}`" in readme.split("### Serving the champion", 1)[1].split("\n## ", 1)[0]
    tmp = tmp_path / "tmp"
    env = serve_env(home, tmp, f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    PORT_LOCK.touch(exist_ok=True)
    with PORT_LOCK.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session running this test holds 5001 until it ends
        log = tmp_path / "serve.log"
        with running(README_LINE, env, tmp_path, 5001, log) as proc:
            line = json.loads(proc.stdout.readline())
            champion = champions["dcgan"]
            assert line == {
                "model": "models:/dcgan@champion",
                "name": "dcgan",
                "version": champion["version"],
                "url": "http://127.0.0.1:5001/invocations",
            }
            private = next(tmp.glob("ganforge-serve-*"))
            assert stat.S_IMODE(private.stat().st_mode) == 0o700
            code = docs_request_block() + "\nprint(json.dumps({'images': images.tolist()}))\n"
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr[-3000:]
            images = np.asarray(json.loads(done.stdout.strip().splitlines()[-1])["images"], dtype=np.float32)
            latents = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
            expected = expected_output(champion, latents)
            assert images.shape == expected.shape == (4, 1, 28, 28)
            assert np.allclose(images, expected, atol=1e-5)
            stopped_cleanly(proc, 5001, tmp, log)


def test_serve_without_the_venv_on_path_answers_latents_with_images(champions, home, tmp_path):
    """`.venv/bin/python -m ganforge.cli serve` with only /usr/bin:/bin on PATH: MLflow still finds
    uvicorn (the interpreter's bin is put first on the server's PATH); a batch of latents gets the
    champion's images, twice (the server keeps serving)."""
    port, tmp = free_port(), tmp_path / "tmp"
    env = serve_env(home, tmp, "/usr/bin:/bin")
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", "--model", "models:/dcgan@champion", "--port", str(port)]
    log = tmp_path / "serve.log"
    with running(cmd, env, tmp_path, port, log) as proc:
        for seed, batch in ((1, 8), (2, 1)):
            latents = np.random.default_rng(seed).standard_normal((batch, 100)).astype(np.float32)
            images = post(port, latents)
            expected = expected_output(champions["dcgan"], latents)
            assert images.shape == expected.shape == (batch, 1, 28, 28)
            assert np.allclose(images, expected, atol=1e-5)
        stopped_cleanly(proc, port, tmp, log)


@pytest.mark.parametrize("preset", IMAGE_TO_IMAGE)
def test_an_image_to_image_champion_answers_images_with_images(preset, champions, home, tmp_path):
    """cyclegan: images (B, C, H, W) in [-1, 1] in, the program's output out (both directions)."""
    champion = champions[preset]
    port, tmp = free_port(), tmp_path / "tmp"
    env = serve_env(home, tmp, f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", "--model", f"models:/{preset}@champion", "--port", str(port)]
    log = tmp_path / "serve.log"
    with running(cmd, env, tmp_path, port, log) as proc:
        images = registry.image_example(champion["cfg"], batch=3, seed=5)
        out = post(port, images)
        expected = expected_output(champion, images)
        assert out.shape == expected.shape
        if preset == "cyclegan":
            assert out.shape == (3, 2, 1, 28, 28)  # dim 1: A→B, B→A
        else:  # pix2pix-sr: 14 px in, 28 px out; pix2pix-inpaint: image + mask channel in, the image out
            assert images.shape[1:] == {"pix2pix-sr": (1, 14, 14), "pix2pix-inpaint": (2, 28, 28)}[preset]
            assert out.shape == (3, 1, 28, 28)
        assert np.allclose(out, expected, atol=1e-5)
        stopped_cleanly(proc, port, tmp, log)


def run_serve(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_a_tampered_model_is_refused_and_nothing_is_served(champions, home, tmp_path, monkeypatch):
    """A pickle payload planted in the stored archive: refused (sha256 mismatch; with the tag rewritten
    to match, MLflow's pickle-free check), exit 2, one line, no server, no copy left, payload never run."""
    monkeypatch.setenv("GANFORGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    champion = register("dcgan", 70.0)  # a version of its own (and the new champion of this store)
    name, version = champion["name"], champion["version"]
    archive = stored_archive(name, version)
    original = archive.read_bytes()
    marker = tmp_path / "payload-ran"
    plant_payload(archive, marker)
    port, tmp = free_port(), tmp_path / "tmp"
    env = serve_env(home, tmp, os.environ["PATH"])
    try:
        done = run_serve(["--model", f"models:/{name}/{version}", "--port", str(port)], env, tmp_path)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "do not match the sha256 recorded at registration" in one_line(done.stderr)
        assert not done.stdout and not list(tmp.iterdir()) and not marker.exists()

        local = tmp_path / "download"
        local.mkdir()
        digest = registry.artifact_digest(registry.quiet_download(f"models:/{name}/{version}", str(local)))
        MlflowClient().set_model_version_tag(name, str(version), registry.ARTIFACT_SHA256_TAG, digest)
        done = run_serve(["--model", f"models:/{name}/{version}", "--port", str(port)], env, tmp_path)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "not a pickle-free payload" in one_line(done.stderr)
        assert not done.stdout and not list(tmp.iterdir()) and not marker.exists() and not listening(port)
    finally:  # the other tests serve this store's champion
        archive.write_bytes(original)
        registry.promote_manual(name, champions["dcgan"]["version"], force=True)


def test_a_model_without_a_pyfunc_flavour_is_refused(home, tmp_path, monkeypatch):
    """A class-conditional program (z, labels) has no python_function flavour: refused with the alternative."""
    monkeypatch.setenv("GANFORGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    cfg = build_config("cdcgan", "tiny")
    torch.manual_seed(0)
    generator, _ = build_models(cfg.model, cfg.data)
    names = [str(i) for i in range(cfg.model.num_classes)]
    version = registry.register_generator(tracking.start_pipeline_run(cfg), generator, cfg, {}, {}, class_names=names)
    env = serve_env(home, tmp_path / "tmp", os.environ["PATH"])
    done = run_serve(["--model", f"models:/{cfg.model_name}/{version}", "--port", str(free_port())], env, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "has no python_function flavour" in line and "mlflow.pytorch.load_model" in line, line
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(
    ("port", "message"),
    [("70000", "--port 70000 is not a TCP port"), ("0", "--port 0 is not a TCP port"), ("taken", "cannot listen")],
)
def test_a_bad_or_taken_port_is_named_before_anything_is_downloaded(port, message, tmp_path):
    """Checked before the registry is asked (the store here does not even exist)."""
    env = serve_env(tmp_path / "no-home", tmp_path / "tmp", os.environ["PATH"])
    with socket.socket() as holder:
        if port == "taken":
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = str(holder.getsockname()[1])
        done = run_serve(["--model", "models:/dcgan@champion", "--port", port], env, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in one_line(done.stderr)
    assert not (tmp_path / "no-home").exists()


def test_the_server_environment_puts_this_interpreter_first_and_disallows_pickles():
    env = serving.server_env({"PATH": "/usr/bin:/bin"})
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    assert (env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"], env["MLFLOW_DEFAULT_PREDICTION_DEVICE"]) == ("false", "cpu")
