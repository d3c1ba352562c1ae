"""Where ganforge keeps state: GANFORGE_HOME (runs, MLflow) and GANFORGE_CACHE (weights, statistics)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Local state of runs: MLflow sqlite store, MLflow artifacts, KFP pipeline root. Default ./.ganforge."""
    return Path(os.environ.get("GANFORGE_HOME", ".ganforge")).expanduser().resolve()


def cache_dir() -> Path:
    """Reusable downloads and derived data (Inception weights, real-data statistics, torchvision datasets).
    Default ~/.cache/ganforge, also when GANFORGE_CACHE is set but empty."""
    return Path(os.environ.get("GANFORGE_CACHE") or "~/.cache/ganforge").expanduser().resolve()
