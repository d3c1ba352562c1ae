"""What `make run` shows: one line per task, the full task output in log files, progress with ETA.

One real kfp.local run (SubprocessRunner, tiny profile) of `python -m pipelines run dcgan` (the command
`make run` runs) with its stdout on a pseudo-terminal, as in a shell, read in full.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

# `make run` of the whole DAG (subprocess timeouts up to 1500 s) runs inside tests: above the suite's default.
pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).parents[1]
TASKS = ["start-run", "prep-test", "prep-train", "train", "evaluate", "register", "end-run"]
FINAL = re.compile(r"(\d\d:\d\d:\d\d) → (\d\d:\d\d:\d\d)  (\S+) +(\S+) +(\d+s|\d+m\d\ds|\d+h\d\dm\d\ds)  log: (\S+)")
ETA = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d")


@pytest.fixture(scope="module")
def terminal_run(dcgan_tiny_run):
    """The session's one tiny dcgan DAG (conftest), run as `make run` runs it, on a terminal."""
    home, _, screen, err = dcgan_tiny_run
    return home, screen, err


def final_lines(screen: str) -> list[str]:
    """The screen's lines as they end up: each line's last carriage-return segment, without erase codes."""
    return [line.split("\r")[-1].replace("\x1b[K", "") for line in screen.split("\n")]


@pytest.mark.slow
def test_one_line_per_task_with_times_status_duration_and_log(terminal_run):
    home, screen, err = terminal_run
    lines = final_lines(screen)
    tasks = [FINAL.fullmatch(ln) for ln in lines if FINAL.fullmatch(ln)]
    names = [m.group(3) for m in tasks]
    assert sorted(names) == sorted(TASKS), "\n".join(lines)  # each task once (the two preps in either order)
    assert names[0] == "start-run" and names[-1] == "end-run"
    assert names.index("prep-train") < names.index("train") < names.index("evaluate") < names.index("register")
    assert all(m.group(4) == "SUCCESS" for m in tasks)
    summary = lines.index("== ganforge run finished ==")
    assert all(ln == "" for ln in lines[len(tasks) : summary]), "nothing but the task lines before the summary"
    (logs,) = [ln.split(": ", 1)[1] for ln in lines[summary:] if ln.strip().startswith("logs:")]
    assert Path(logs).parent == home / "logs" / "runs"
    for m in tasks:
        assert Path(m.group(6)) == Path(logs) / f"{m.group(3)}.log"
    assert err.strip() == "", err


@pytest.mark.slow
def test_no_executor_input_or_runner_chatter_on_the_terminal(terminal_run):
    _, screen, err = terminal_run
    for noise in (
        "executor_input",
        '"inputs"',
        "Executing task",
        "Streamed logs",
        "UserWarning",
        "RuntimeWarning",
        "Running pipeline",
        "KFP Executor",
    ):
        assert noise not in screen and noise not in err, noise
    assert len(final_lines(screen)) < 40


@pytest.mark.slow
def test_log_files_hold_each_task_output(terminal_run):
    home, screen, _ = terminal_run
    (logs,) = {Path(m.group(6)).parent for m in map(FINAL.fullmatch, final_lines(screen)) if m}
    assert sorted(p.name for p in logs.iterdir()) == sorted([f"{t}.log" for t in TASKS] + ["pipeline.log"])
    for task in TASKS:
        text = (logs / f"{task}.log").read_text()
        # kfp.local's own lines name the task by its component (prep-data-2), the file by its display name.
        assert "Executing task" in text and "Got executor_input:" in text and "finished with status" in text, task
    assert "no effect in the current local runner" in (logs / "train.log").read_text()  # kfp's warning
    assert ETA.search((logs / "train.log").read_text()), "the training bar is in the train log"
    assert "Processing samples" in (logs / "evaluate.log").read_text()
    assert "Running pipeline" in (logs / "pipeline.log").read_text()


@pytest.mark.slow
def test_running_task_line_shows_its_progress_bar_with_eta(terminal_run):
    """While train and evaluate run, their line is redrawn with the task's latest bar: elapsed<remaining."""
    _, screen, _ = terminal_run
    redraws = [seg.replace("\x1b[K", "") for line in screen.split("\n") for seg in line.split("\r")]
    live = {
        task: [m.group(1) for s in redraws if (m := re.match(rf"\d\d:\d\d:\d\d → +{task} +running +\S+  (.*)", s))]
        for task in ("train", "evaluate")
    }  # what follows the elapsed time on the task's own line
    assert any(bar.startswith("train:") and ETA.search(bar) for bar in live["train"]), live["train"]
    assert any(bar.startswith("Processing samples:") and ETA.search(bar) for bar in live["evaluate"]), live["evaluate"]


def test_last_progress_is_the_newest_bar_of_the_log_tail():
    from pipelines.console import last_progress

    text = (
        "train:  12%|█▎ | 1/8 [00:02<00:14,  2.11s/step]\rtrain:  25%|██▌ | 2/8 [00:04<00:12,  2.08s/step]\n"
        "some log line\n"
    )
    assert last_progress(text) == "train:  25%|██▌ | 2/8 [00:04<00:12,  2.08s/step]"
    assert last_progress("no bar here\n") is None


@pytest.mark.parametrize("value, enabled", [("1", True), ("0", False), ("", False)])
def test_progress_env_switches_bars_on_and_off(monkeypatch, value, enabled):
    from ganforge.progress import progress_enabled

    monkeypatch.setenv("GANFORGE_PROGRESS", value)
    assert progress_enabled() is enabled  # "" = unset: on only when stderr is a terminal (not under pytest)


def test_bad_progress_value_is_one_line_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "dcgan", "--profile", "tiny"],
        cwd=tmp_path,
        env=cli_env(GANFORGE_HOME=str(tmp_path / "home"), GANFORGE_PROGRESS="yes"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: GANFORGE_PROGRESS='yes': write 1 (progress bars on), 0 (off), or leave it unset "
        "(bars only when stderr is a terminal)"
    ], done.stderr
    assert not (tmp_path / "home" / "logs").exists()


@pytest.mark.slow
def test_failed_task_line_log_tail_and_error_off_a_terminal(tmp_path):
    """stdout a pipe (no live lines): prep-test fails on a source without the test split (a real DataError);
    its line says FAILURE, the end of its log follows, and the one-line error names the log directory. The
    task ran once (no retries on this machine: the same input fails the same way); the exit task ended the
    MLflow run FAILED with the step named; the --set override reached the run's config."""
    from conftest import FASHION_DIR

    source = tmp_path / "train-only"
    source.mkdir()
    for f in FASHION_DIR.glob("train-*"):
        (source / f.name).symlink_to(f)
    env = cli_env(GANFORGE_HOME=str(tmp_path / "home"))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            "dcgan",
            "--profile",
            "tiny",
            "--source",
            str(source),
            "--set",
            "train.max_steps=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    finals = {m.group(3): m for m in map(FINAL.fullmatch, done.stdout.splitlines()) if m}
    assert finals["prep-test"].group(4) == "FAILURE" and finals["end-run"].group(4) == "SUCCESS"
    assert "evaluate" not in finals and "register" not in finals  # train does not need prep-test
    tail = done.stdout.split(finals["prep-test"].group(0) + "\n", 1)[1].splitlines()
    assert tail[0].startswith("    | ") and any(
        "t10k-images-idx3-ubyte" in ln for ln in tail if ln.startswith("    | ")
    )
    (error,) = done.stderr.strip().splitlines()
    logs = Path(finals["prep-test"].group(6)).parent
    assert error.startswith("error: ") and error.endswith(f"Task logs: {logs}"), error
    prep_log = (logs / "prep-test.log").read_text()
    assert "t10k-images-idx3-ubyte" in prep_log
    assert prep_log.count("Executing task") == 1, "kfp.local retried a task of a local run"

    from mlflow import MlflowClient

    from ganforge.config import build_config

    client = MlflowClient(f"sqlite:///{tmp_path / 'home'}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    assert run.info.status == "FAILED" and run.info.end_time >= run.info.start_time
    tags = run.data.tags
    assert tags["ganforge.failed_step"] == "prep-test" and tags["ganforge.step.prep-test"] == "failed"
    assert "t10k-images-idx3-ubyte" in tags["ganforge.error"] and tags["ganforge.kfp_state"] == "FAILED"
    assert tags["ganforge.step.prep-train"] == "done" and "ganforge.step.register" not in tags
    assert run.data.params["train.max_steps"] == "2" != str(build_config("dcgan", "tiny").train.max_steps)
    assert client.search_model_versions("name='dcgan'") == []
