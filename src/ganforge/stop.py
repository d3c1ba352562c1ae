"""Stopping on SIGTERM and SIGINT: what Kubernetes sends a pod it evicts or preempts, and Ctrl-C.

Two behaviours, both ending in :class:`Stopped` (exit status 128 + the signal: 143, 130):

``raising_on_sigterm()``, around every command of the command line: SIGTERM raises
``Stopped`` where the program is, as SIGINT raises KeyboardInterrupt, so ``finally`` blocks and
the atomic writers' cleanup run (no temporary file is left) instead of the process vanishing.

:class:`StopFlag`, installed by the training loops: SIGTERM and SIGINT only set a flag, which
the loop reads at each step boundary (:meth:`StopFlag.agreed`); it then writes a checkpoint at
that step, the same as a periodic one, and raises ``Stopped``. Under DDP every rank reads the
flag through one all-reduce (MAX) of a one-element tensor per step, so all ranks stop at the
same step even when only one was signalled. A second SIGINT raises KeyboardInterrupt at once (a
person pressing Ctrl-C twice wants out now); a repeated SIGTERM changes nothing, because
launchers forward SIGTERM and a rank may get it twice (from torchrun and from a kill of the
whole group).

A disposition inherited as ignored (SIG_IGN) is kept, for SIGINT as Python itself does: a job
started in the background by a non-interactive shell ignores SIGINT, so a Ctrl-C meant for the
foreground job leaves it alone. Handlers are installed from the main thread only (Python
allows no other); elsewhere these are no-ops.

Once a process is stopping, further SIGTERMs are ignored so they cannot interrupt the final
writes (a launcher that saw one rank exit signals the others, which are already on their way).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_STATUSES = frozenset(128 + s for s in STOP_SIGNALS)
"""Exit statuses of a process stopped by one of STOP_SIGNALS: 143 (SIGTERM), 130 (SIGINT)."""


class Stopped(BaseException):
    """The process was asked to stop by ``signum``; ``step`` and ``checkpoint`` name the training
    state saved on the way out (None outside a training loop). A BaseException, like
    KeyboardInterrupt, so that ``except Exception`` blocks on the way do not swallow it."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint
        name = signal.Signals(self.signum).name
        what = "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else f"stopped by {name}"
        where = f" at step {step}; checkpoint written to {checkpoint}" if step is not None else ""
        super().__init__(what + where)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _ignore(signum, frame) -> None:
    """SIGTERM's handler once the process is stopping (a no-op, not SIG_IGN: children start with the default)."""


def _raise_stopped(signum, frame) -> None:
    signal.signal(signum, _ignore)  # one exception: a repeated signal must not interrupt the cleanup it started
    raise Stopped(signum)


@contextlib.contextmanager
def raising_on_sigterm() -> Iterator[None]:
    """SIGTERM raises Stopped while the block runs (unless SIGTERM was inherited ignored); the previous
    handler returns after it, unless the block was stopped: then further SIGTERMs are ignored, so they
    cannot cut short the exit of a process on its way out (its status stays 143)."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    except Stopped:
        previous = _ignore
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class StopFlag:
    """SIGTERM and SIGINT set ``signum`` while the ``with`` block runs; the previous handlers return after it
    (SIGTERM's only if no stop was requested: a process that stopped is on its way out)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if _in_main_thread():
            for sig in STOP_SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            if sig == signal.SIGTERM and self.signum:
                previous = _ignore
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum

    def agreed(self, world_size: int = 1, device=None) -> int:
        """The stop signal every rank sees at this step boundary (0: go on). Every rank must call it at the
        same steps: with ``world_size`` > 1 it is an all-reduce (MAX) of a one-element tensor on ``device``
        (NCCL needs it on the GPU) — a few microseconds, and one host–device sync, which the loop's per-step
        finiteness check already makes."""
        if world_size == 1:
            return self.signum
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


@contextlib.contextmanager
def forwarding(child) -> Iterator[list[int]]:
    """While the block runs, SIGTERM and SIGINT sent to this process go to ``child`` (a Popen) instead of
    interrupting it; the yielded list collects the signals forwarded. For a launcher that waits on its ranks'
    launcher: the ranks stop at a step boundary and write their checkpoint, and this process waits for them."""
    forwarded: list[int] = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {}
    if _in_main_thread():
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not signal.SIG_IGN:
                previous[sig] = handler
                signal.signal(sig, forward)
    try:
        yield forwarded
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
