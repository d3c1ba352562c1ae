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


class GanforgeError(Exception):
    """A recognised problem with input or environment; the message says what it is and the fix."""


class OutputPathError(GanforgeError, ValueError):
    """An ``--out`` path ganforge refuses to replace (a file, the source, a user's folder)."""
