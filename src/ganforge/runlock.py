"""One writer per run directory: a lock file naming the training process that holds it.

``run_lock(run_dir)`` creates ``run_dir/.ganforge-train.lock`` with ``O_CREAT | O_EXCL`` (so of two
processes exactly one creates it) holding the holder's pid, host, process start time and a random
token, and removes it on the way out (return, exception, Ctrl-C). A second holder is refused with
one line naming the first. A lock whose process is gone (same host, pid not running or running a
later process) is stale — a killed run — and is taken over with a note; a lock from another host
cannot be judged from here and is refused, naming that host.

Ranks: the process that holds the lock puts its token in the environment (``TOKEN_ENV``), so the
torchrun ranks it starts recognise the lock as their launcher's and take nothing; under a launcher
that holds no lock (a cluster job's torchrun), rank 0 takes it and the other ranks never do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import GanforgeError
from .fileio import ensure_parent, write_failure

LOCK_NAME = ".ganforge-train.lock"
TOKEN_ENV = "GANFORGE_RUN_LOCK_TOKEN"
"""Set while a process holds a run lock: the token of the lock, inherited by the ranks it starts."""


class RunLockedError(GanforgeError, RuntimeError):
    """Another process trains into the same run directory; the message names it and the fix."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc), None where unknown. With the pid
    it names one process: a pid the kernel reused for a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the command name in (…) may hold spaces


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def _read(lock: Path) -> dict | None:
    """The lock file's record; None if it is gone, {} if it is empty or unreadable (being written)."""
    try:
        d = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (its lock file is empty: it is being taken right now)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started', '?')})"


def _create(lock: Path, record: dict) -> bool:
    """Create the lock file holding ``record``; False if it exists."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise write_failure(lock, e) from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _remove_if_same(lock: Path, holder: dict) -> bool:
    """Remove a stale lock file, unless another process replaced it meanwhile; True if removed.

    Under an exclusive flock of the stale file: of several processes taking it over, one at a time
    checks that the path still names that file with that record, so only the first removes it."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    with os.fdopen(fd) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same_file = os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return False
        if not same_file or _read(lock) != holder:
            return False
        lock.unlink()
        return True


def _refusal(run_dir: Path, lock: Path, holder: dict) -> RunLockedError:
    here = socket.gethostname()
    if holder and holder.get("host") != here:
        fix = (
            f"wait for it to finish, or train into another --out; if no ganforge train runs on {holder.get('host')}, "
            f"delete {lock}"
        )
    else:
        fix = (
            "wait for it to finish (or stop it), or train into another --out; "
            f"if that process is not a ganforge train, delete {lock}"
        )
    return RunLockedError(f"{run_dir} is being trained into by {_describe(holder)}: one writer per run. Fix: {fix}")


def acquire(run_dir: Path) -> tuple[Path, str]:
    """Take the lock of ``run_dir`` (created if missing): (lock path, token). RunLockedError if held."""
    lock = run_dir / LOCK_NAME
    ensure_parent(lock)
    token = uuid.uuid4().hex
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_start": _process_start(os.getpid()),
        "token": token,
    }
    for _ in range(3):
        if _create(lock, record):
            return lock, token
        holder = _read(lock)
        if holder is None:
            continue  # released between our attempt and the read
        if not holder or holder.get("host") != record["host"] or _alive(holder):
            raise _refusal(run_dir, lock, holder)
        if _remove_if_same(lock, holder):
            print(
                f"note: {lock} was left by {_describe(holder)}, which is no longer running (killed?); taking it over",
                file=sys.stderr,
            )
    raise _refusal(run_dir, lock, _read(lock) or {})


def release(lock: Path, token: str) -> None:
    """Remove the lock file if it is still ours."""
    if (_read(lock) or {}).get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``run_dir`` for the block (see the module docstring). Inside a process that a
    holder of this very lock started (its token in ``TOKEN_ENV``), nothing is taken. A folder this
    call created stays only if the block wrote something into it."""
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_NAME
    inherited = os.environ.get(TOKEN_ENV)
    if inherited and (_read(lock) or {}).get("token") == inherited:
        yield
        return
    existed = run_dir.exists()
    lock, token = acquire(run_dir)
    os.environ[TOKEN_ENV] = token
    try:
        yield
    finally:
        if inherited is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = inherited
        release(lock, token)
        if not existed:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty: a run refused before its first file leaves nothing
