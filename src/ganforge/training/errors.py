"""Errors the training loop raises."""

from __future__ import annotations

from ..errors import GanforgeError


class TrainingError(GanforgeError, RuntimeError):
    """Training cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    pass
