"""The checks of ``scripts/k8s_check.py``, one module per concern.

Importing the package puts the repository root and ``src/`` on ``sys.path``, so the checks
import ``pipelines.kube`` and ``ganforge`` without an installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
for _path in (REPO_ROOT, REPO_ROOT / "src"):  # pipelines.kube and ganforge, also without an installed package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
