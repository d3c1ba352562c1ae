"""How many CPU threads ganforge uses: the cores that are free, decided once per process at its entry point.

On a machine whose cores other processes also use, torch's default (one intra-op thread per
core) loses badly: every parallel region waits for its slowest thread, and a thread whose core
another process holds stalls the whole step for a scheduler slice. Measured on 2 cores with one
busy competitor (``make bench``, group ``threads``): 2 threads ran slower than 1. So the default is

    threads = max(1, (usable cores - cores busy with other processes) // processes)

where *usable cores* are this process's CPU affinity (capped by a cgroup CPU quota), *busy* is
what the other processes used during a short probe of ``/proc/stat`` (this process's own CPU time
subtracted; a core counts as busy from half a core of use), and *processes* are the training
ranks or evaluation workers on this machine that share the cores — so ranks × threads never
exceeds the cores.

Overrides, in this order: ``GANFORGE_THREADS=N`` — the cores ganforge may use in all, split
between the ranks/workers (``auto``, the default: the free cores); ``OMP_NUM_THREADS=N`` — the
threads of each process, taken as given (torchrun sets 1 per rank when it is unset).

The decision is made once per process (:func:`configure`, called by the CLI and the pipeline
steps) and not revised while training: results are bitwise reproducible only at an equal thread
count (a step's reductions are split by thread), so a run that must match another bit for bit —
a resume compared with an uninterrupted run — should pin the count with ``GANFORGE_THREADS``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import GanforgeError
from .progress import progress_enabled

THREADS_ENV = "GANFORGE_THREADS"
PROBE_SECONDS = 0.3
BUSY_FROM = 0.5
"""Another process's use of a core counts as the core being busy from this fraction on."""


class ThreadsError(GanforgeError, ValueError):
    """GANFORGE_THREADS or OMP_NUM_THREADS is not a positive integer."""


@dataclass(frozen=True)
class ThreadPlan:
    """The decision: ``threads`` intra-op threads in each of ``processes`` processes."""

    threads: int
    processes: int
    cores: int
    """Cores this process may run on (affinity, cgroup quota)."""
    busy: float | None
    """Cores other processes used during the probe (None: not probed, an override decided)."""
    source: str
    """What decided: ``free cores``, ``GANFORGE_THREADS`` or ``OMP_NUM_THREADS``."""
    free: int = 0
    """Cores ganforge may use in all: the free cores, GANFORGE_THREADS, or (OMP_NUM_THREADS) the usable cores."""

    @property
    def budget(self) -> int:
        """Cores the processes use between them."""
        return self.threads * self.processes

    def describe(self) -> str:
        busy = f", {self.busy:.1f} busy with other processes" if self.busy is not None else ""
        per = f" × {self.processes} processes" if self.processes > 1 else ""
        return f"{self.threads} thread(s){per} ({self.source}: {self.cores} usable cores{busy})"


def usable_cores() -> int:
    """CPUs in this process's affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of ``cpus`` from /proc/stat; None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        f = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(f)
        busy += sum(f) - f[3] - f[4]
    return busy, total


def busy_cores(seconds: float = PROBE_SECONDS) -> float | None:
    """Cores other processes kept busy over ``seconds`` (this process's CPU time subtracted); None if unknown."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    before, own0, t0 = _cpu_jiffies(cpus), time.process_time(), time.monotonic()
    if before is None:
        return None
    time.sleep(seconds)
    after, own1, t1 = _cpu_jiffies(cpus), time.process_time(), time.monotonic()
    if after is None or t1 <= t0:
        return None
    others = (after[0] - before[0]) / hz - (own1 - own0)
    return max(0.0, min(float(len(cpus)), others / (t1 - t0)))


def _positive(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ThreadsError(
            f"{name}={raw!r} must be a positive integer"
            + (" or 'auto' (the free cores)" if name == THREADS_ENV else " (threads per process)")
        )
    return int(raw)


def decide(
    processes: int = 1, *, cores: int, busy: float | None, override: str | None = None, omp: str | None = None
) -> ThreadPlan:
    """The plan for ``processes`` processes on ``cores`` cores of which ``busy`` are used by others (pure)."""
    processes = max(1, processes)
    if override and override.strip().lower() != "auto":
        budget = _positive(THREADS_ENV, override)
        return ThreadPlan(max(1, budget // processes), processes, cores, None, THREADS_ENV, budget)
    if omp and omp.strip():
        return ThreadPlan(_positive("OMP_NUM_THREADS", omp), processes, cores, None, "OMP_NUM_THREADS", cores)
    taken = 0 if busy is None else math.floor(busy + (1 - BUSY_FROM))
    free = max(1, cores - taken)
    return ThreadPlan(max(1, free // processes), processes, cores, busy, "free cores", free)


def plan_from_environment(processes: int = 1, environ: Mapping[str, str] | None = None) -> ThreadPlan:
    """The plan for this machine now: reads GANFORGE_THREADS and OMP_NUM_THREADS, probes only when neither is set."""
    env = os.environ if environ is None else environ
    override, omp = env.get(THREADS_ENV), env.get("OMP_NUM_THREADS")
    pinned = (override and override.strip().lower() != "auto") or (omp and omp.strip())
    return decide(processes, cores=usable_cores(), busy=None if pinned else busy_cores(), override=override, omp=omp)


_applied: ThreadPlan | None = None


def apply(plan: ThreadPlan) -> ThreadPlan:
    """torch's intra-op threads ← plan.threads; one inter-op thread (ganforge runs no inter-op work)."""
    global _applied
    import torch

    torch.set_num_threads(plan.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # inter-op pool already started (set once per process): leave it
    _applied = plan
    return plan


def configure(processes: int = 1, *, verbose: bool = True) -> ThreadPlan:
    """Decide and apply the plan once per process (later calls return it); one line on stderr when the probe
    lowered the count and progress is shown (GANFORGE_PROGRESS, else a terminal)."""
    if _applied is not None:
        return _applied
    plan = apply(plan_from_environment(processes))
    # Said where progress is shown (a terminal, a pipeline task's log), not in front of a one-line error
    # of a scripted call.
    if verbose and plan.busy is not None and plan.threads < plan.cores and progress_enabled():
        print(f"ganforge: using {plan.describe()}; set {THREADS_ENV}=N to choose", file=sys.stderr, flush=True)
    return plan


def applied() -> ThreadPlan | None:
    """The plan this process applied, or None."""
    return _applied


def split(plan: ThreadPlan, processes: int) -> int:
    """Threads for each of ``processes`` processes sharing the cores ``plan`` found free (at least 1)."""
    return max(1, plan.free // max(1, processes))


def env_for_ranks(ranks: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``ranks`` processes started from this one (torchrun): OMP_NUM_THREADS = each one's
    share of the free cores this process found, unless the user set it (torchrun would give every rank 1; ranks
    that probed for themselves while the others start up would count each other as busy)."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("OMP_NUM_THREADS", "").strip():
        env["OMP_NUM_THREADS"] = str(split(configure(), ranks))
    return env


def cap_processes(requested: int, plan: ThreadPlan | None = None) -> int:
    """Worker processes of one thread each that fit the free cores the entry point found (without one — a library
    caller — the usable cores): at least 1, at most ``requested``."""
    plan = plan or _applied
    return max(1, min(requested, plan.free if plan is not None else usable_cores()))
