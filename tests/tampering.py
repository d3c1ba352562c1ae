"""Editing a registered model's stored files the way an attacker who can write them would.

One home for the set-up test_serving and test_model_trust share: a sqlite store under a GANFORGE_HOME, the
stored files of a version, the payloads (a pickle in the pt2 archive, a bundled module), the MLmodel edit,
the sha256 tag rewritten to match, and the ganforge CLI run as a subprocess with its one-line refusal.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import cli_env
from ganforge.platform import registry, tracking

SAMPLE_INPUTS_RECORD = "data/sample_inputs/model.pt"
"""The pt2 record torch.export.load unpickles with weights_only=False when weights_only=True fails."""


def sqlite_store(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this process at the sqlite store under ``home`` (no MLflow URI from the environment); its URI."""
    monkeypatch.setenv("GANFORGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return tracking.configure()


def stored_model_dir(name: str, version: int) -> Path:
    """The version's files inside the store (a local artifact location on the sqlite store)."""
    c = MlflowClient()
    model_id = registry.logged_model_id(c.get_model_version(name, str(version)))
    location = c.get_logged_model(model_id).artifact_location
    path = Path(location[len("file://") :] if location.startswith("file://") else location)
    assert path.is_dir(), location
    return path


def stored_archive(name: str, version: int) -> Path:
    """The model.pt2 file inside the store."""
    return stored_model_dir(name, version) / "data" / "model.pt2"


class Payload:
    """A pickle that writes ``marker`` when unpickled (what an attacker would plant)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def plant_payload(archive: Path, marker: Path) -> None:
    """Replace the archive's sample-inputs record by a pickle payload (the rest stays intact)."""
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    tampered = archive.with_suffix(".tampered")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        names = [info.filename for info in src.infolist()]
        assert any(n.endswith(SAMPLE_INPUTS_RECORD) for n in names), names
        for info in src.infolist():
            data = payload.getvalue() if info.filename.endswith(SAMPLE_INPUTS_RECORD) else src.read(info)
            dst.writestr(info, data)
    os.replace(tampered, archive)


def plant_module(model_dir: Path, marker: Path) -> None:
    """``code/evilmod.py``: writes ``marker`` when imported; also a pyfunc loader if asked for one."""
    (model_dir / "code").mkdir()
    (model_dir / "code" / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').write('payload ran')\ndef _load_pyfunc(*args, **kwargs):\n    return None\n"
    )


def edit_mlmodel(model_dir: Path, edit: Callable[[dict], object]) -> None:
    """Apply ``edit`` to the MLmodel file's ``flavors`` mapping, in place."""
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    edit(meta["flavors"])
    (model_dir / "MLmodel").write_text(yaml.safe_dump(meta))


def rewrite_digest_tag(name: str, version: int, tmp: Path) -> None:
    """What a writer of the files can do next: record the tampered files' digest as the tag (downloaded
    into ``tmp/redigest``)."""
    local = tmp / "redigest"
    local.mkdir()
    digest = registry.artifact_digest(registry.quiet_download(f"models:/{name}/{version}", str(local)))
    MlflowClient().set_model_version_tag(name, str(version), registry.ARTIFACT_SHA256_TAG, digest)


def ganforge(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m ganforge.cli ARGS`` against the sqlite store under ``home``."""
    env = cli_env(GANFORGE_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "ganforge.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )


def assert_refused(done: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 with one line on stderr (no traceback) holding every needle."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    for needle in needles:
        assert needle in done.stderr, done.stderr
