"""``ganforge train --mlflow`` closes the MLflow run it opens: FINISHED, FAILED or KILLED, and RUNNING
again while ``--resume`` continues it (real sqlite store, real training, a real Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ganforge import cli


def _run(run_id):
    from ganforge.platform import tracking

    tracking.configure()
    return tracking.client().get_run(run_id)


def _train_args(data, out, *extra):
    return ["train", "--preset", "dcgan", "--profile", "tiny", "--data", str(data), "--out", str(out), "--mlflow",
            *extra]  # fmt: skip


def test_a_run_that_trains_is_finished_and_a_resumed_one_runs_again_then_finishes(
    fashion_train, tmp_path, ganforge_home, monkeypatch
):
    out = tmp_path / "run"
    assert cli.main(_train_args(fashion_train, out, "--set", "train.max_steps=4")) == 0
    run_id = (out / cli.MLFLOW_RUN_FILE).read_text().strip()
    first = _run(run_id).info
    assert first.status == "FINISHED" and first.end_time >= first.start_time

    seen = []
    from ganforge.platform import tracking

    logging_callback = tracking.MlflowMetricsCallback.__call__

    def watching(self, step, metrics):  # the run's status while the resumed training logs its losses
        seen.append(_run(run_id).info.status)
        return logging_callback(self, step, metrics)

    monkeypatch.setattr(tracking.MlflowMetricsCallback, "__call__", watching)
    assert cli.main(_train_args(fashion_train, out, "--set", "train.max_steps=8", "--resume")) == 0
    assert seen and set(seen) == {"RUNNING"}
    again = _run(run_id).info
    assert again.status == "FINISHED" and again.end_time >= first.end_time
    assert [m.step for m in tracking.client().get_metric_history(run_id, "train_wall_s")] == [4, 8]


def test_a_run_whose_training_fails_is_marked_failed(tmp_path, ganforge_home, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_args(tmp_path / "no-such-dataset", out)) == 2
    assert "no-such-dataset" in capsys.readouterr().err
    assert _run((out / cli.MLFLOW_RUN_FILE).read_text().strip()).info.status == "FAILED"


def test_ctrl_c_marks_the_run_killed_and_resume_finishes_it(fashion_train, tmp_path, ganforge_home):
    out = tmp_path / "run"
    # the tiny profile stops at step 8 (seconds on an idle machine): train far longer, logging every step
    endless = ["train.max_steps=1000000", "train.epochs=1000", "train.log_every=1", "train.checkpoint_every=1000000"]
    args = _train_args(fashion_train, out, *(a for kv in endless for a in ("--set", kv)))
    # A suite started in the background (`bash -c '… &'`, `nohup … &`) inherits SIGINT *ignored* — bash does that
    # to asynchronous commands — and so would the child, whose Python then installs no Ctrl-C handler at all and
    # trains on: a user's terminal Ctrl-C is what this test means, so the child gets the default disposition.
    child = subprocess.Popen(
        [sys.executable, "-m", "ganforge.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GANFORGE_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    limit_s = 300  # no speed test: start-up and exit take seconds; a child that never exits fails, and says so
    try:
        deadline = time.monotonic() + limit_s
        for line in child.stderr:  # wait for training steps: the run exists and is being logged to
            if line.startswith("step ") or time.monotonic() > deadline:
                break
        assert line.startswith("step "), line
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            child.kill()
            _, err = child.communicate(timeout=60)  # killed: returns at once
            hung = f"train did not exit within {limit_s} s of Ctrl-C; its stderr ends:\n{err[-3000:]}"
            raise AssertionError(hung) from None
    finally:
        child.kill()
    assert child.returncode == 130, err
    run_id = (out / cli.MLFLOW_RUN_FILE).read_text().strip()
    assert _run(run_id).info.status == "KILLED"
    assert cli.main(_train_args(fashion_train, out, "--set", "train.max_steps=4", "--resume")) == 0
    assert (out / cli.MLFLOW_RUN_FILE).read_text().strip() == run_id
    assert _run(run_id).info.status == "FINISHED"
