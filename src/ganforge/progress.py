"""Progress bars (tqdm, on stderr) for training steps and Inception feature extraction.

Shown when stderr is a terminal; ``GANFORGE_PROGRESS=1`` forces them on (``python -m pipelines
run`` sets it for its tasks, whose output goes to a log file that it follows for the ETA),
``GANFORGE_PROGRESS=0`` off. Forced onto a file or pipe, a bar redraws at most once a second.
"""

from __future__ import annotations

import os
import sys

from .config import ConfigError

PROGRESS_ENV = "GANFORGE_PROGRESS"


def progress_enabled() -> bool:
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if raw in ("1", "0"):
        return raw == "1"
    if raw:
        raise ConfigError(
            f"{PROGRESS_ENV}={raw!r}: write 1 (progress bars on), 0 (off), or leave it unset "
            "(bars only when stderr is a terminal)"
        )
    return sys.stderr.isatty()


def min_interval() -> float:
    """Seconds between redraws: tqdm's 0.1 on a terminal, 1 on a file or pipe (a log stays small)."""
    return 0.1 if sys.stderr.isatty() else 1.0
