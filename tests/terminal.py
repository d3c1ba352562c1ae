"""Running a command with its stdout on a pseudo-terminal, as in a shell (what `make run` shows a user)."""

from __future__ import annotations

import os
import pty
import subprocess
import threading
from pathlib import Path


def run_on_a_terminal(argv: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` with stdout on a pty; returns (exit code, everything written to the pty, stderr)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        os.close(slave)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=60)
            raise
        reader.join(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"), err.decode()
