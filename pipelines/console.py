"""What ``python -m pipelines run`` shows: one line per task, its full output in a log file.

kfp.local prints each task's streamed output (SubprocessRunner and DockerRunner alike, with
``print``), its executor input and outputs, and its own log records (a handler on ``sys.stdout``)
and warnings. While a pipeline runs inside :func:`task_logs`, everything written to this process's
stdout and stderr — Python objects and file descriptors 1 and 2, so child processes too — goes to
``LOG_DIR/<task>.log`` while a task runs and to ``LOG_DIR/pipeline.log`` otherwise. The terminal
gets one line per task: start and end time, name, status, duration and the log's path.

While a task runs on a terminal, its line is redrawn every second with the elapsed time and the
task's latest progress bar (tqdm, e.g. ``train: 35%|███ | 70/200 [00:42<01:18, 1.6step/s]``, or
torch-fidelity's "Processing samples" during feature extraction), read back from its log: the
ETA of training and of evaluation. Off a terminal only the final lines are printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# A tqdm bar: "... 35%|███ | 70/200 [00:42<01:18, 1.60step/s]" (the [elapsed<remaining] part).
_BAR = re.compile(r"\d+/\d+ \[\d[\d:]*<[\d:?]+")
REFRESH_S = 1.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s"


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"


def last_progress(text: str) -> str | None:
    """The newest tqdm bar in ``text`` (segments split on CR and LF), stripped; None if there is none."""
    for segment in reversed(re.split(r"[\r\n]", text)):
        if _BAR.search(segment):
            return segment.strip()
    return None


class _Redirect:
    """Python's sys.stdout/sys.stderr and fds 1/2 onto one file, restorable."""

    def __init__(self) -> None:
        self._saved: list = []

    @contextlib.contextmanager
    def to(self, path: Path) -> Iterator[None]:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        saved_fds = (os.dup(1), os.dup(2))
        saved_objects = (sys.stdout, sys.stderr)
        stream = io.TextIOWrapper(
            os.fdopen(os.dup(fd), "wb", buffering=0),
            encoding="utf-8",
            errors="replace",
            line_buffering=True,
            write_through=True,
        )
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = stream
            yield
        finally:
            with contextlib.suppress(Exception):
                stream.flush()
            sys.stdout, sys.stderr = saved_objects
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for f in (*saved_fds, fd):
                os.close(f)
            stream.close()


class TaskConsole:
    """Writes the per-task lines to ``out`` (a terminal gets the live line too)."""

    def __init__(self, log_dir: Path, out: TextIO) -> None:
        self.log_dir = log_dir
        self.out = out
        self.tty = out.isatty()
        self._lock = threading.Lock()
        self.tasks: list[dict] = []

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def _line(self, task: dict, now: float) -> str:
        end = _clock(task["end"]) if task.get("end") else "        "
        status = task.get("status", "running")
        text = (
            f"{_clock(task['start'])} → {end}  {task['name']:<12} {status:<8} "
            f"{_duration((task.get('end') or now) - task['start']):>8}"
        )
        if task.get("end"):
            return f"{text}  log: {task['log']}"
        return f"{text}  {task['progress']}" if task.get("progress") else text

    def _follow(self, task: dict, stop: threading.Event) -> None:
        """Redraw the task's line every REFRESH_S with its latest progress bar (terminal only)."""
        offset, tail = 0, ""
        while not stop.wait(REFRESH_S):
            with contextlib.suppress(OSError), open(task["log"], "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                tail = (tail + chunk.decode("utf-8", "replace"))[-4096:]
            task["progress"] = last_progress(tail) or task.get("progress")
            width = shutil.get_terminal_size((120, 24)).columns
            self._write("\r\033[K" + self._line(task, time.time())[: max(width - 1, 20)])

    @contextlib.contextmanager
    def task(self, name: str, redirect: _Redirect) -> Iterator[dict]:
        log = self.log_dir / f"{_safe(name)}.log"
        if log.exists():  # a second task of the same name (kfp.local task names are unique; display names not)
            log = self.log_dir / f"{_safe(name)}-{sum(1 for t in self.tasks if t['name'] == name) + 1}.log"
        task = {"name": name, "log": log, "start": time.time()}
        self.tasks.append(task)
        stop = threading.Event()
        follower = threading.Thread(target=self._follow, args=(task, stop), daemon=True) if self.tty else None
        if follower:
            self._write(self._line(task, task["start"]))
            follower.start()
        try:
            with redirect.to(log):
                yield task
        except BaseException:
            task.setdefault("status", "ERROR")
            raise
        finally:
            stop.set()
            if follower:
                follower.join()
            task["end"] = time.time()
            task.setdefault("status", "?")
            self._write(("\r\033[K" if self.tty else "") + self._line(task, task["end"]) + "\n")
            if task["status"] != "SUCCESS":
                self._write(self._tail(log))

    @staticmethod
    def _tail(log: Path, lines: int = 15) -> str:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return ""
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # kfp.local colours task names and statuses
        shown = [ln for ln in re.split(r"[\r\n]", text) if ln.strip()][-lines:]
        return "".join(f"    | {ln}\n" for ln in shown)


def run_dir(home: Path, pipeline: str) -> Path:
    """``$GANFORGE_HOME/logs/runs/<pipeline>-<UTC time>``, new for each run."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = home / "logs" / "runs" / f"{pipeline}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


@contextlib.contextmanager
def task_logs(log_dir: Path, out: TextIO | None = None) -> Iterator[TaskConsole]:
    """Run a kfp.local pipeline inside this block: task output to ``log_dir``, one line per task to ``out``
    (default: this process's stdout as it was when the block began)."""
    from kfp.local import status as kfp_status
    from kfp.local.orchestrator import task_executor

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    own_out = False
    if out is None:
        try:  # a copy of fd 1 as it is now: fd 1 itself is redirected inside the block
            out = io.TextIOWrapper(
                os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0),
                encoding="utf-8",
                errors="replace",
                line_buffering=True,
                write_through=True,
            )
            own_out = True
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            out = sys.stdout  # an in-memory stream (e.g. under a test's capture): it is not redirected
    console = TaskConsole(log_dir, out)
    redirect = _Redirect()
    original = task_executor.execute_single_task

    def execute_single_task(task_name, task_spec, *args, **kwargs):
        with console.task(task_spec.task_info.name or task_name, redirect) as task:
            outputs, task_status = original(task_name, task_spec, *args, **kwargs)
            task["status"] = "SUCCESS" if task_status == kfp_status.Status.SUCCESS else task_status.name
        return outputs, task_status

    task_executor.execute_single_task = execute_single_task
    try:
        with redirect.to(log_dir / "pipeline.log"):
            yield console
    finally:
        task_executor.execute_single_task = original
        if own_out:
            out.close()
