"""No output path clobbers an input or another run: `evaluate --out`, `train --out`, one writer per run
directory (its lock), and `--resume` onto other data. Real runs, files and processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env
from ganforge import cli
from ganforge.checkpoint import read_checkpoint, write_checkpoint
from ganforge.evaluate import is_metrics_json
from ganforge.fileio import check_output_file
from ganforge.runlock import LOCK_NAME


def run_main(capsys, *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = cli.main(list(argv))
    return status, capsys.readouterr().err.strip().splitlines()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


TINY = ("--profile", "tiny", "--set", "train.max_steps=2")


@pytest.fixture(scope="module")
def trained(fashion_train, tmp_path_factory) -> Path:
    """A 2-step tiny run directory, trained once for the module (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", *TINY, "--data", str(fashion_train), "--out", str(run)]) == 0
    return run


def test_evaluate_out_never_replaces_an_input_a_folder_or_a_users_file(trained, fashion_test, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    before = {**tree(trained), **tree(fashion_test), "notes": notes.read_bytes()}
    checkpoint = trained / "checkpoint.pt"
    cases = {
        checkpoint: f"--out {checkpoint} is the input {checkpoint}",
        fashion_test / "manifest.json": f"is inside the input {fashion_test}",
        fashion_test / "new.json": f"is inside the input {fashion_test}",
        trained: f"--out {trained} is a folder holding the input {checkpoint}",
        tmp_path: f"--out {tmp_path} is a directory; ganforge evaluate writes one JSON file",
        notes: f"--out {notes} exists and is not a metrics file ganforge evaluate wrote",
    }
    for out, expected in cases.items():
        status, err = run_main(
            capsys,
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(fashion_test),
            "--n",
            "8",
            "--out",
            str(out),
        )
        assert status == 2 and len(err) == 1 and expected in err[0] and "Fix:" in err[0], (out, err)
    assert {**tree(trained), **tree(fashion_test), "notes": notes.read_bytes()} == before


def test_evaluate_out_replaces_its_own_metrics_json_only(tmp_path):
    own = tmp_path / "metrics.json"
    own.write_text(json.dumps({"pipeline": "dcgan", "profile": "tiny", "checkpoint": "c.pt", "generator": "ema"}))
    assert check_output_file(own, command="evaluate", inputs=[], is_own=is_metrics_json) == own
    own.write_text(json.dumps({"pipeline": "dcgan"}))  # JSON, but not an evaluation's record
    with pytest.raises(ValueError, match="is not a metrics file evaluate wrote"):
        check_output_file(own, command="evaluate", inputs=[], is_own=is_metrics_json)


def test_train_out_refuses_a_users_folder_the_data_its_parents_home_root_and_such_links(
    fashion_train, tmp_path, capsys, monkeypatch
):
    users = tmp_path / "thesis"
    users.mkdir()
    (users / "config.json").write_text('{"theme": "dark"}')
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PS1='$ '\n")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "to-thesis").symlink_to(users)
    (tmp_path / "to-data").symlink_to(fashion_train)
    (tmp_path / "afile").write_text("x")
    not_a_run = "is a non-empty folder that is not a ganforge run"
    cases = {
        users: not_a_run,
        Path(os.path.expanduser("~")): not_a_run,
        tmp_path / "to-thesis": f"(a link to {users}) {not_a_run}",
        fashion_train: f"--out {fashion_train} is the input {fashion_train}",
        fashion_train / "run": f"is inside the input {fashion_train}",
        fashion_train.parent: f"is a folder holding the input {fashion_train}",
        tmp_path / "to-data": f"is the input {fashion_train}",
        Path("/"): f"is a folder holding the input {fashion_train}",
        tmp_path / "afile": "is a file; ganforge train writes a run directory",
    }
    before = {**tree(tmp_path), **tree(fashion_train.parent)}
    for out, expected in cases.items():
        status, err = run_main(capsys, "train", *TINY, "--data", str(fashion_train), "--out", str(out))
        assert status == 2 and len(err) == 1 and expected in err[0] and "Fix:" in err[0], (out, err)
    assert {**tree(tmp_path), **tree(fashion_train.parent)} == before


def test_train_out_may_be_a_link_to_an_empty_folder_and_a_run_resumes(fashion_train, tmp_path, capsys):
    (tmp_path / "disk").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "disk")
    common = ["train", "--profile", "tiny", "--data", str(fashion_train), "--out", str(tmp_path / "run")]
    assert run_main(capsys, *common, "--set", "train.max_steps=2")[0] == 0
    assert read_checkpoint(tmp_path / "disk" / "checkpoint.pt")["step"] == 2
    assert run_main(capsys, *common, "--set", "train.max_steps=4", "--resume")[0] == 0  # a run: resumed
    assert read_checkpoint(tmp_path / "disk" / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / "disk" / LOCK_NAME).exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate(timeout=60)[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_a_second_writer_is_refused_and_a_killed_runs_lock_is_taken_over(trained, fashion_train, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    first = subprocess.Popen(
        [sys.executable, "-m", "ganforge.cli", "train", "--profile", "tiny", "--data", str(fashion_train)]
        + ["--out", str(run), "--resume", "--set", "train.epochs=100000", "--set", "train.max_steps=None"],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(run / "samples" / "epoch_002.png", first)  # training, past its first epoch
        config = (run / "config.json").read_bytes()
        status, err = run_main(
            capsys, "train", *TINY, "--set", "train.lr_g=0.5", "--data", str(fashion_train), "--out", str(run)
        )
        assert status == 2 and len(err) == 1, err
        assert f"{run} is being trained into by pid {first.pid} on host {socket.gethostname()}" in err[0]
        assert (run / "config.json").read_bytes() == config  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid  # a killed run leaves its lock
    status, err = run_main(capsys, "train", "--profile", "tiny", "--data", str(fashion_train), "--out", str(run))
    assert status == 0 and f"left by pid {first.pid} on host" in "\n".join(err) and "taking it over" in "\n".join(err)
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 8  # trained from scratch (no --resume), as asked
    assert not (run / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_refused_and_every_exit_releases_the_lock(trained, fashion_train, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=60)  # its pid runs nothing here; on node-7 it may: a lock from another host is never judged stale
    lock = {"pid": gone.pid, "host": "node-7", "started": "2026-01-01T00:00:00+0000"}
    (run / LOCK_NAME).write_text(json.dumps(lock))
    status, err = run_main(capsys, "train", *TINY, "--data", str(fashion_train), "--out", str(run), "--resume")
    assert status == 2 and len(err) == 1 and f"is being trained into by pid {gone.pid} on host node-7" in err[0], err
    assert f"if no ganforge train runs on node-7, delete {run / LOCK_NAME}" in err[0]
    (run / LOCK_NAME).unlink()
    # A refusal after the lock was taken (a changed config on --resume) releases it.
    status, err = run_main(
        capsys, "train", *TINY, "--set", "train.lr_d=0.5", "--data", str(fashion_train), "--out", str(run), "--resume"
    )
    assert status == 2 and "train.lr_d" in err[0] and not (run / LOCK_NAME).exists()
    # A run refused before its first file leaves no folder behind.
    status, _ = run_main(
        capsys, "train", *TINY, "--set", "train.lr_d=0.5", "--data", str(run), "--out", str(tmp_path / "new")
    )
    assert status == 2 and not (tmp_path / "new").exists()


def test_resume_on_another_dataset_needs_the_flag(trained, fashion_train, fashion_test, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    trained_on = json.loads((fashion_train / "manifest.json").read_text())["sha256"]
    other = json.loads((fashion_test / "manifest.json").read_text())["sha256"]
    assert read_checkpoint(run / "checkpoint.pt")["data_sha256"] == trained_on
    resume = ["train", "--profile", "tiny", "--set", "train.max_steps=4", "--data", str(fashion_test)]
    resume += ["--out", str(run), "--resume"]
    status, err = run_main(capsys, *resume)
    assert status == 2 and len(err) == 1, err
    assert f"trained on a dataset with sha256 {trained_on}, but {fashion_test} has sha256 {other}" in err[0]
    assert "--allow-data-change" in err[0] and read_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert run_main(capsys, *resume, "--allow-data-change")[0] == 0
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["data_sha256"] == other
    # A checkpoint written before the dataset was recorded resumes on any data, as before.
    del ckpt["data_sha256"]
    write_checkpoint(run / "checkpoint.pt", ckpt)
    resume[resume.index("train.max_steps=4")] = "train.max_steps=6"
    resume[resume.index(str(fashion_test))] = str(fashion_train)
    assert run_main(capsys, *resume)[0] == 0 and read_checkpoint(run / "checkpoint.pt")["step"] == 6
