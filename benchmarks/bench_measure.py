"""Measuring steps: alternated rounds (ABBA) with per-round ratios, the CPU's fp32 peak, a step's
FLOPs and its time per group of operations."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from bench_steps import GanforgeStep


@dataclass
class Measured:
    """Per-round images/s of each contestant, measured alternately in one process.

    ``cpu_s_per_step`` is the process CPU time per step in each round: with one thread it is the work a step
    costs whatever else runs on the machine; with more, it also counts threads spinning while they wait.
    """

    img_per_s: dict[str, list[float]]
    cpu_s_per_step: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.img_per_s[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of a/b, each round's pair measured back to back."""
        return statistics.median(x / y for x, y in zip(self.img_per_s[a], self.img_per_s[b]))


def measure_alternating(
    steps: dict[str, Callable[[], None]], images_per_step: int, *, warmup: int, steps_per_round: int, rounds: int
) -> Measured:
    """Warm every contestant up, then time ``steps_per_round`` steps of each per round, order reversed each round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps_per_round):
                steps[name]()
            rates[name].append(steps_per_round * images_per_step / (time.perf_counter() - t0))
            cpu[name].append((time.process_time() - c0) / steps_per_round)
    return Measured(rates, cpu)


FMA_UNITS = 2
"""256-bit FMA pipes per core: two on every AVX2 core this runs on (Haswell and later, Zen 1–4)."""


def fp32_peak(threads: int) -> dict:
    """The fp32 peak of ``threads`` cores: cores × FMA units × lanes × 2 flops (multiply + add) × clock.

    Lanes: 16 with AVX-512, else 8 (AVX2). Clock: /proc/cpuinfo's ``cpu MHz`` (the rated clock in a VM;
    a turbo clock above it would lower the fraction).
    """
    mhz = (
        max(
            (
                float(line.split(":", 1)[1])
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")
            ),
            default=float("nan"),
        )
        if Path("/proc/cpuinfo").exists()
        else float("nan")
    )
    lanes = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    gflops = threads * FMA_UNITS * lanes * 2 * mhz / 1000
    return {
        "gflop_per_s": gflops,
        "how": f"{threads} core(s) × {FMA_UNITS} FMA units × {lanes} fp32 lanes × 2 flops × "
        f"{mhz / 1000:.3f} GHz (/proc/cpuinfo) = {gflops:.1f} GFLOP/s",
    }


def step_flops(step: Callable[[], None]) -> float:
    """FLOPs of one step (forward and backward of G and D), counted by torch.utils.flop_counter (convolutions
    and matrix products; BatchNorm, activations and the optimiser add well under 1 %)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


OP_GROUPS = (
    "conv-transpose forward (G)",
    "conv-transpose backward (G)",
    "conv forward (D)",
    "conv backward (D)",
    "BatchNorm",
    "activations + loss",
    "optimiser (Adam)",
    "EMA",
    "other ops (data, noise, zeroing)",
    "Python + autograd overhead",
)


def profile_step(step: GanforgeStep) -> dict:
    """Seconds of one step by op group: every aten op timed as it runs (a TorchDispatchMode), the optimiser
    and EMA by their calls; the rest of the wall time is Python and autograd bookkeeping."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    seconds = dict.fromkeys(OP_GROUPS, 0.0)
    phase: list[str | None] = [None]

    def group_of(func, args) -> str:
        if phase[0]:
            return phase[0]
        packet = func.overloadpacket
        if packet is aten.convolution:
            return "conv-transpose forward (G)" if args[6] else "conv forward (D)"
        if packet is aten.convolution_backward:
            return "conv-transpose backward (G)" if args[7] else "conv backward (D)"
        name = packet.__name__
        if "batch_norm" in name:
            return "BatchNorm"
        if any(k in name for k in ("relu", "threshold", "tanh", "sigmoid", "binary_cross_entropy", "softplus")):
            return "activations + loss"
        return "other ops (data, noise, zeroing)"

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            seconds[group_of(func, args)] += time.perf_counter() - t0
            return out

    def in_phase(name: str, fn: Callable) -> Callable:
        def run(*a, **k):
            phase[0] = name
            try:
                return fn(*a, **k)
            finally:
                phase[0] = None

        return run

    step.opt_g.step = in_phase("optimiser (Adam)", step.opt_g.step)
    step.opt_d.step = in_phase("optimiser (Adam)", step.opt_d.step)
    step.update_ema = in_phase("EMA", step.update_ema)
    step()  # warm-up
    for k in seconds:
        seconds[k] = 0.0
    t0 = time.perf_counter()
    with Timer():
        step()
    wall = time.perf_counter() - t0
    seconds["Python + autograd overhead"] = max(0.0, wall - sum(seconds.values()))
    return {"wall_s": wall, "seconds": seconds}


def format_profile(details: dict) -> str:
    prof = details.get("profile")
    if not prof:
        return ""
    lines = [
        f"train step profile (64² DCGAN, {details['threads']} thread(s), {prof['wall_s']:.2f} s/step, "
        f"{details['gflop_per_step']:.0f} GFLOP/step; peak {details['peak']['how']}):"
    ]
    for name, sec in sorted(prof["seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<36s} {sec * 1000:7.0f} ms  {100 * sec / prof['wall_s']:5.1f} %")
    return "\n".join(lines)
