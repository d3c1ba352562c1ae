"""The checks of ``scripts/k8s_check.py``, one module per concern.

Importing the package puts the repository root and ``src/`` on ``sys.path``, so the checks
import ``pipelines.kube`` and ``ganforge`` without an installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
# pipelines.kube and ganforge also without an installed package; scripts/ for the checks kept beside
# k8s_check.py (k8s_hardening, k8s_serving).
for _path in (REPO_ROOT, REPO_ROOT / "src", REPO_ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
