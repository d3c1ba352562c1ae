"""SIGTERM (Kubernetes eviction and spot preemption) and SIGINT stop ganforge gracefully: real signals sent
to real processes. Training stops at a step boundary with a checkpoint at that step, exit status 143
(SIGTERM), the MLflow run KILLED, and ``--resume`` continues bit for bit; two gloo ranks agree on the step;
other commands remove their temporary files on the way out."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from ganforge import cli
from ganforge.checkpoint import read_checkpoint
from ganforge.config import build_config

LIMIT_S = 300  # no speed test: a child that never gets there, or never exits, fails and says so
LONG = ["train.epochs=1000", "train.log_every=1", "train.checkpoint_every=3"]
"""Trains far longer than the tests wait (max_steps set per run), a step line per step, periodic checkpoints
at steps 3, 6, …"""


def _sets(*pairs: str) -> list[str]:
    return [word for kv in pairs for word in ("--set", kv)]


def _train_args(data: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    return ["train", "--preset", "dcgan", "--profile", "tiny", "--data", str(data), "--out", str(out),
            *_sets(*LONG, f"train.max_steps={max_steps}"), *extra]  # fmt: skip


def _default_dispositions() -> None:
    """The child's SIGINT and SIGTERM start at their defaults: a suite launched in the background inherits
    SIGINT ignored, which ganforge (like Python) keeps."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sigint_ignored() -> None:
    """As a background job of a non-interactive shell starts: SIGINT ignored, SIGTERM at its default."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(args: list[str], dispositions=_default_dispositions) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ganforge.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(GANFORGE_THREADS="1"),  # bitwise resume needs the same thread count in every run
        preexec_fn=dispositions,
    )


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            kids.append(int(stat.parent.name))
    return kids


def _tree(pid: int) -> list[int]:
    """A process and everything under it (torchrun's ranks run in sessions of their own)."""
    pids, i = [pid], 0
    while i < len(pids):
        pids += _children(pids[i])
        i += 1
    return pids


def _kill(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _signal_after(child: subprocess.Popen, *sends) -> tuple[int, str]:
    """For each (marker, send): wait for a stderr line starting with ``marker`` and call ``send()``; then wait
    for the exit: (status, stderr)."""
    seen, tree, exited = [], [], False
    try:
        deadline = time.monotonic() + LIMIT_S
        for marker, send in sends:
            for line in child.stderr:
                seen.append(line)
                if line.startswith(marker) or time.monotonic() > deadline:
                    break
            assert seen and seen[-1].startswith(marker), "".join(seen)[-3000:]
            tree = tree or _tree(child.pid)  # taken now: a launcher that dies orphans its ranks, which must not train
            send()
        with contextlib.suppress(subprocess.TimeoutExpired):
            exited = child.wait(timeout=LIMIT_S) is not None
    finally:
        _kill(_tree(child.pid) + tree)
    err = "".join(seen) + child.stderr.read()  # every writer has exited or was killed: the pipe ends
    assert exited, f"no exit within {LIMIT_S} s of the signal; stderr ends:\n{err[-3000:]}"
    return child.returncode, err


def _stopped_step(err: str) -> int:
    found = re.findall(r"stopped by SIGTERM at step (\d+); checkpoint written to ", err)
    assert found, err[-3000:]
    return int(found[-1])


def _run_cli(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ganforge.cli", *args],
        env=cli_env(GANFORGE_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _train_one_thread(data: Path, out: Path, max_steps: int, resume: bool = False) -> None:
    """``train`` in this process at the children's one thread (a step's float sums depend on the count)."""
    from ganforge.train import train

    cfg = build_config("dcgan", "tiny", [*LONG, f"train.max_steps={max_steps}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, data, out, resume=resume)
    finally:
        torch.set_num_threads(threads)


def _assert_same_weights(ref_dir: Path, got_dir: Path) -> None:
    ref, got = read_checkpoint(ref_dir / "checkpoint.pt"), read_checkpoint(got_dir / "checkpoint.pt")
    assert got["step"] == ref["step"]
    for key in ("G", "G_ema", "D"):
        assert ref[key].keys() == got[key].keys()
        assert all(torch.equal(ref[key][k], got[key][k]) for k in ref[key]), f"{key} differs after the resume"


@pytest.mark.slow  # training subprocesses (torchrun and two ranks for the --nproc ones)
def test_sigterm_saves_the_step_marks_the_run_killed_and_resume_is_bitwise(fashion_train, tmp_path, ganforge_home):
    from ganforge.platform import tracking

    out = tmp_path / "run"
    # Started as a background job is (SIGINT ignored): ganforge keeps that, so a SIGINT changes nothing and
    # training goes on; SIGTERM, which such a job does not ignore, stops it.
    child = _start(_train_args(fashion_train, out, 100_000, "--mlflow"), _sigint_ignored)
    status, err = _signal_after(
        child,
        ("step 4/", lambda: child.send_signal(signal.SIGINT)),
        ("step 7/", lambda: child.send_signal(signal.SIGTERM)),
    )
    assert status == 143, err[-3000:]
    stopped = _stopped_step(err)
    saved = read_checkpoint(out / "checkpoint.pt")
    assert saved["step"] == stopped >= 7  # the stop's own checkpoint, past the periodic one at step 6
    tracking.configure()
    run_id = (out / cli.MLFLOW_RUN_FILE).read_text().strip()
    assert tracking.client().get_run(run_id).info.status == "KILLED"
    # logged up to the step it stopped at (the buffered curve points were sent on the way out)
    assert max(m.step for m in tracking.client().get_metric_history(run_id, "loss_d")) == stopped

    end = stopped + 3  # the resume (here, in this process) goes on from the stop step to an uninterrupted run's end
    _train_one_thread(fashion_train, out, end, resume=True)
    _train_one_thread(fashion_train, tmp_path / "ref", end)
    _assert_same_weights(tmp_path / "ref", out)


@pytest.mark.slow  # training subprocesses (torchrun and two ranks for the --nproc ones)
def test_sigterm_to_the_launcher_of_two_gloo_ranks_stops_both_at_one_step(fashion_train, tmp_path):
    out = tmp_path / "run"
    child = _start(_train_args(fashion_train, out, 100_000, "--nproc", "2"))
    status, err = _signal_after(child, ("step 4/", lambda: child.send_signal(signal.SIGTERM)))  # the launcher only
    assert status == 143, err[-3000:]
    stopped = _stopped_step(err)
    ranks = sorted(line for line in err.splitlines() if re.match(r"rank \d of 2: trained steps ", line))
    assert ranks == [f"rank 0 of 2: trained steps 1-{stopped}", f"rank 1 of 2: trained steps 1-{stopped}"], err
    assert read_checkpoint(out / "checkpoint.pt")["step"] == stopped >= 4
    # The stop's checkpoint is the state an uninterrupted two-rank run has at that step, bit for bit; resuming
    # from a two-rank checkpoint is bitwise (test_train's SIGKILL test), so the resume continues it exactly.
    _run_cli(_train_args(fashion_train, tmp_path / "ref", stopped, "--nproc", "2"))
    _assert_same_weights(tmp_path / "ref", out)


def _rank_pid(cli_pid: int, rank: int) -> int:
    """The process of training rank ``rank`` under ``ganforge train --nproc N`` (cli → launcher → ranks)."""
    for launcher in _children(cli_pid):
        for worker in _children(launcher):
            if f"RANK={rank}".encode() in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0"):
                return worker
    raise AssertionError(f"no rank {rank} under process {cli_pid}")


@pytest.mark.slow  # training subprocesses (torchrun and two ranks for the --nproc ones)
def test_sigterm_to_one_rank_stops_every_rank_at_one_step_with_status_143(fashion_train, tmp_path):
    out = tmp_path / "run"
    child = _start(_train_args(fashion_train, out, 100_000, "--nproc", "2"))
    status, err = _signal_after(child, ("step 4/", lambda: os.kill(_rank_pid(child.pid, 1), signal.SIGTERM)))
    assert status == 143, err[-3000:]
    stopped = _stopped_step(err)
    ranks = sorted(line for line in err.splitlines() if re.match(r"rank \d of 2: trained steps ", line))
    assert ranks == [f"rank 0 of 2: trained steps 1-{stopped}", f"rank 1 of 2: trained steps 1-{stopped}"], err
    assert read_checkpoint(out / "checkpoint.pt")["step"] == stopped >= 4


@pytest.fixture(scope="module")
def tiny_checkpoint(fashion_train, tmp_path_factory) -> Path:
    from ganforge.train import train

    out = tmp_path_factory.mktemp("tiny-run")
    return train(build_config("dcgan", "tiny", {"train": {"max_steps": 2}}), fashion_train, out).checkpoint


def test_sigterm_during_generate_leaves_no_temporary_files(tiny_checkpoint, tmp_path):
    out = tmp_path / "samples"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ganforge.cli",
            "generate",
            "--model",
            str(tiny_checkpoint),
            "-n",
            "20000",
            "--out",
            str(out),
        ],  # fmt: skip
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(GANFORGE_THREADS="1"),
        preexec_fn=_default_dispositions,
    )
    try:
        deadline = time.monotonic() + LIMIT_S
        writing = []
        while not writing and child.poll() is None and time.monotonic() < deadline:
            writing = [p for p in tmp_path.glob(".samples.*.tmp/images/*.png")]
            time.sleep(0.05)
        assert writing, f"generate wrote no images into a temporary directory (status {child.poll()})"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=LIMIT_S)
    finally:
        child.kill()
    assert child.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "nothing half-written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a temporary (or partial) output was left behind"


def test_ranks_that_stopped_on_one_signal_keep_its_status():
    """torchrun SIGTERMs the ranks still running once one has exited 143; those die of it (-15) while they
    exit, and the run still stopped on SIGTERM. A rank that failed otherwise, or only torchrun's kill, is not
    a stop."""
    from ganforge.launch import stop_status

    assert stop_status({143}) == 143 and stop_status({143, -15}) == 143 and stop_status({130, -2}) == 130
    assert stop_status({-15}) is None and stop_status({1, 143}) is None and stop_status({143, 130}) is None
