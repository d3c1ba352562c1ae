"""The one base class of ganforge's domain errors.

A :class:`GanforgeError` is a problem with the user's input or environment that ganforge
recognised and can explain: bad data, a bad config, a damaged checkpoint, an S3 endpoint that
does not answer. Its message is one line naming the problem, the file (or URI) and the fix.
The command line (``ganforge.cli.main``) prints exactly these as ``ganforge CMD: error: …``
and exits 2; every other exception is a bug and keeps its traceback.

The module-specific classes (``DataError``, ``ConfigError``, ``StorageError``,
``CheckpointError``, …) derive from it and, for compatibility with callers that caught the
old built-in bases, also from ``ValueError`` or ``RuntimeError``.
"""

from __future__ import annotations

import importlib


class GanforgeError(Exception):
    """A recognised problem with input or environment; the message says what it is and the fix."""


class OutputPathError(GanforgeError, ValueError):
    """An ``--out`` path ganforge refuses to replace (a file, the source, a user's folder)."""


PLATFORM_PACKAGES = frozenset({"boto3", "botocore", "s3transfer", "mlflow", "kfp", "kfp_server_api", "kubernetes"})
"""Top-level packages of the extra ``platform``; the core never needs them."""


class PlatformMissingError(GanforgeError, ImportError):
    """A command or source needs the platform layer, whose packages are not installed."""


def require_platform(module: str, needed_for: str):
    """``ganforge.platform.<module>``, imported now: the core's one way into the platform layer.

    The core imports no platform module at load time (tests/test_layers.py); the few features
    that live there — s3:// data sources, models:/ registry URIs, MLflow logging, cluster
    training — reach it through this call. A missing platform package becomes a one-line
    PlatformMissingError naming ``needed_for`` and the fix; any other ImportError is a bug and
    propagates unchanged.
    """
    try:
        return importlib.import_module(f"ganforge.platform.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in PLATFORM_PACKAGES:
            raise
        raise PlatformMissingError(
            f"{needed_for} needs the platform layer, and its package {e.name!r} is not "
            "installed. Fix: pip install 'ganforge[platform]'"
        ) from None
