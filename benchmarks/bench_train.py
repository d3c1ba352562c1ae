"""Training throughput: ganforge's real step against a naive PyTorch loop, and each speed switch.

Every ratio is measured in one process with both sides alternated round by round (ABBA order)
after a warm-up, so machine noise (other jobs on the shared cores) hits both sides alike. A
ratio is the median of the per-round ratios; an img/s value is the median of its rounds.

"Ours" is ganforge's training step exactly as ``ganforge.train.train`` runs it: uint8 batches
from an in-memory tensor, converted to float per batch (``to_float``), ``_Context.prepare``
(channels_last when the config says so), ``d_step``, ``g_step``, ``update_ema``. "Naive" is the
pytorch/examples DCGAN loop over the same networks: a torchvision-style Dataset converting one
PIL image per item (Resize, ToTensor, Normalize) through a DataLoader (num_workers=0),
Sigmoid + BCELoss, contiguous NCHW, fp32.

Run as a script (``python benchmarks/bench_train.py compile …``) it measures the torch.compile
effect in a child process, so the caller can cap compile time with a timeout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ganforge.config import DEFAULT_IDX_DIR, DataConfig, PipelineConfig, build_config, with_overrides
from ganforge.data import DataError, load_dataset, prepare, read_idx_dir
from ganforge.models import build_models
from ganforge.train import (
    DistInfo,
    _Context,
    build_training_state,
    d_step,
    epoch_permutation,
    g_step,
    global_noise,
    to_float,
    update_ema,
)

BENCH_IMAGES = 2048
"""Fashion-MNIST training images held in memory (32 batches of 64: no epoch boundary inside a round)."""


def dcgan64_config() -> PipelineConfig:
    """pytorch/examples' DCGAN setting (64², batch 64, nz 100, ngf = ndf = 64) on 1-channel Fashion-MNIST."""
    return build_config(
        "dcgan",
        "local",
        {
            "data": {"resolution": 64, "limit": BENCH_IMAGES},
            "model": {"ngf": 64, "ndf": 64},
            "train": {"batch_size": 64},
        },
    )


def dcgan32_small_config() -> PipelineConfig:
    """A 32² DCGAN with ngf = ndf = 16, for the compile measurement (compiling the 64² model is slow on 2 cores)."""
    return build_config(
        "dcgan",
        "local",
        {
            "data": {"resolution": 32, "limit": BENCH_IMAGES},
            "model": {"ngf": 16, "ndf": 16},
            "train": {"batch_size": 64},
        },
    )


def prepared_dataset(cfg: DataConfig, work_dir: Path) -> Path:
    """The Fashion-MNIST training split prepared for cfg under work_dir, reused when already there."""
    out = work_dir / f"fashion_{cfg.resolution}px_{cfg.channels}ch_{cfg.limit}"
    expected = [cfg.limit, cfg.channels, cfg.resolution, cfg.resolution]
    try:
        if load_dataset(out).manifest["shape"] == expected:
            return out
    except DataError:
        pass  # not prepared yet (or damaged): prepare it afresh
    prepare(cfg, out, split="train")
    return out


def in_memory_uint8(data_dir: Path) -> torch.Tensor:
    """The prepared uint8 images read into memory once, as ``train`` does."""
    return torch.from_numpy(np.array(load_dataset(data_dir).images))


def pil_source_images(limit: int) -> list:
    """The first ``limit`` 28×28 Fashion-MNIST training images as PIL images (what torchvision's dataset holds)."""
    from PIL import Image

    raw = read_idx_dir(Path(DEFAULT_IDX_DIR), "train", DataConfig(resolution=28, limit=limit))
    return [Image.fromarray(img[0], mode="L") for img in raw.images]


class PILImageDataset(Dataset):
    """torchvision-style: one PIL image converted per ``__getitem__`` (Resize, ToTensor, Normalize)."""

    def __init__(self, images: list, resolution: int):
        from torchvision import transforms

        self.images = images
        self.transform = transforms.Compose(
            [transforms.Resize(resolution), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def endless_pil_batches(images: list, resolution: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled float batches from a DataLoader(num_workers=0) over PILImageDataset, epoch after epoch."""
    loader = DataLoader(
        PILImageDataset(images, resolution),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader


def endless_uint8_batches(data: torch.Tensor, cfg: PipelineConfig) -> Iterator[torch.Tensor]:
    """uint8 batches in ``train``'s order: a seeded permutation per epoch, sliced by batch."""
    b = cfg.train.batch_size
    epoch = 0
    while True:
        perm = epoch_permutation(len(data), cfg.train.seed, epoch)
        for start in range(0, len(data) - b + 1, b):
            yield data[perm[start : start + b]]
        epoch += 1


class GanforgeStep:
    """ganforge's training step (the body of ``train``'s loop) on one rank, fed uint8 or float batches."""

    def __init__(self, cfg: PipelineConfig, batches: Iterator[torch.Tensor]):
        self.cfg, self.batches = cfg, batches
        self.dist = DistInfo()
        self.G, self.D, self.G_ema, self.opt_g, self.opt_d = build_training_state(cfg, self.dist.device)
        self.ctx = _Context(cfg, self.dist)
        self.G_train = torch.compile(self.G) if cfg.train.compile else self.G
        self.D_train = torch.compile(self.D) if cfg.train.compile else self.D
        self.step = 0
        self.update_ema = update_ema
        self.G.train(), self.D.train()

    def real_batch(self) -> torch.Tensor:
        batch = next(self.batches)
        return self.ctx.prepare(to_float(batch) if batch.dtype == torch.uint8 else batch)

    def __call__(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        for k in range(cfg.train.n_critic):
            d_step(
                self.G_train,
                self.D_train,
                self.opt_d,
                self.real_batch(),
                ctx.prepare(global_noise(cfg, self.step, k, self.dist)),
                ctx,
            )
        g_step(
            self.G_train,
            self.D_train,
            self.opt_g,
            ctx.prepare(global_noise(cfg, self.step, cfg.train.n_critic, self.dist)),
            ctx,
        )
        self.update_ema(self.G_ema, self.G, cfg.train.ema_decay, self.step)
        self.step += 1


class NaiveStep:
    """pytorch/examples ``dcgan/main.py``'s step over ganforge's networks: Sigmoid + BCELoss, NCHW, fp32."""

    def __init__(self, cfg: PipelineConfig, batches: Iterator[torch.Tensor]):
        self.batches, self.nz = batches, cfg.model.nz
        torch.manual_seed(cfg.train.seed)
        self.G, self.D = build_models(cfg.model, cfg.data)
        tc = cfg.train
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2))
        self.criterion = nn.BCELoss()

    def __call__(self) -> None:
        real = next(self.batches)
        b = real.shape[0]
        self.D.zero_grad()
        label = torch.full((b,), 1.0)
        self.criterion(torch.sigmoid(self.D(real)), label).backward()
        fake = self.G(torch.randn(b, self.nz, 1, 1))
        label.fill_(0.0)
        self.criterion(torch.sigmoid(self.D(fake.detach())), label).backward()
        self.opt_d.step()
        self.G.zero_grad()
        label.fill_(1.0)
        self.criterion(torch.sigmoid(self.D(fake)), label).backward()
        self.opt_g.step()


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


@torch.no_grad()
def update_ema_foreach(g_ema: nn.Module, g: nn.Module, decay: float, step: int) -> None:
    """``update_ema`` as two multi-tensor kernels (torch._foreach_lerp_ and _foreach_copy_): a lever measured."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(g_ema.parameters()), [p.detach() for p in g.parameters()], 1 - d)
    torch._foreach_copy_(list(g_ema.buffers()), list(g.buffers()))


def with_adam(step: GanforgeStep, **kind) -> GanforgeStep:
    """The step with both optimisers rebuilt as Adam(**kind) (foreach=True / fused=True), same hyper-parameters."""
    tc = step.cfg.train
    step.opt_g = torch.optim.Adam(step.G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2), **kind)
    step.opt_d = torch.optim.Adam(step.D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2), **kind)
    return step


def with_ema(step: GanforgeStep, fn: Callable) -> GanforgeStep:
    step.update_ema = fn
    return step


def without_onednn(step: Callable[[], None]) -> Callable[[], None]:
    """The step with oneDNN (mkldnn) convolutions switched off: ATen's own CPU kernels instead."""

    def run() -> None:
        with torch.backends.mkldnn.flags(enabled=False):
            step()

    return run


TRAIN_VARIANTS = (
    "ours",
    "naive",
    "ours_channels_last_flipped",
    "ours_bf16",
    "ours_pil_fed",
    "ours_adam_foreach",
    "ours_adam_fused",
    "ours_ema_foreach",
    "ours_no_onednn",
)
"""Contestants of the in-process training session; each metric needs some of them."""


def build_train_contestants(
    cfg: PipelineConfig, data: torch.Tensor, pil_images: list, variants: tuple[str, ...]
) -> dict[str, Callable[[], None]]:
    """The requested contestants, all on the same config except the one switch each varies."""
    res, b, seed = cfg.data.resolution, cfg.train.batch_size, cfg.train.seed
    makers = {
        "ours": lambda: GanforgeStep(cfg, endless_uint8_batches(data, cfg)),
        "naive": lambda: NaiveStep(cfg, endless_pil_batches(pil_images, res, b, seed)),
        "ours_channels_last_flipped": lambda: GanforgeStep(
            with_overrides(cfg, train={"channels_last": not cfg.train.channels_last}), endless_uint8_batches(data, cfg)
        ),
        "ours_bf16": lambda: GanforgeStep(with_overrides(cfg, train={"amp": "bf16"}), endless_uint8_batches(data, cfg)),
        "ours_pil_fed": lambda: GanforgeStep(cfg, endless_pil_batches(pil_images, res, b, seed)),
        "ours_adam_foreach": lambda: with_adam(GanforgeStep(cfg, endless_uint8_batches(data, cfg)), foreach=True),
        "ours_adam_fused": lambda: with_adam(GanforgeStep(cfg, endless_uint8_batches(data, cfg)), fused=True),
        "ours_ema_foreach": lambda: with_ema(GanforgeStep(cfg, endless_uint8_batches(data, cfg)), update_ema_foreach),
        "ours_no_onednn": lambda: without_onednn(GanforgeStep(cfg, endless_uint8_batches(data, cfg))),
    }
    return {v: makers[v]() for v in variants}


def train_metrics(measured: Measured, cfg: PipelineConfig) -> dict[str, float]:
    """Metric values from a training session (only those whose contestants were measured)."""
    have = set(measured.img_per_s)
    out: dict[str, float] = {}
    if "ours" in have:
        out["train_img_per_s"] = measured.median("ours")
    if {"ours", "naive"} <= have:
        out["train_vs_naive"] = measured.ratio("ours", "naive")
        out["naive_img_per_s"] = measured.median("naive")
    if {"ours", "ours_channels_last_flipped"} <= have:
        # with / without channels_last, whichever of the two the config default is
        r = measured.ratio("ours", "ours_channels_last_flipped")
        out["channels_last_effect"] = r if cfg.train.channels_last else 1 / r
    if {"ours", "ours_bf16"} <= have and cfg.train.amp == "off":
        out["amp_bf16_effect"] = measured.ratio("ours_bf16", "ours")
    if {"ours", "ours_pil_fed"} <= have:
        out["uint8_in_memory_effect"] = measured.ratio("ours", "ours_pil_fed")
    for variant, metric in LEVERS.items():
        if {"ours", variant} <= have:
            on, off = (variant, "ours") if metric != "onednn_effect" else ("ours", variant)
            out[metric] = measured.ratio(on, off)
    return out


LEVERS = {
    "ours_adam_foreach": "adam_foreach_effect",
    "ours_adam_fused": "adam_fused_effect",
    "ours_ema_foreach": "ema_foreach_effect",
    "ours_no_onednn": "onednn_effect",
}
"""Contestant → its metric: the lever on / off (oneDNN: with / without, since it is on by default)."""


def variants_for(metric_names: set[str]) -> tuple[str, ...]:
    """Contestants needed for the requested training metrics (always including ours)."""
    need = {"ours"}
    need |= {"naive"} if "train_vs_naive" in metric_names else set()
    need |= {"ours_channels_last_flipped"} if "channels_last_effect" in metric_names else set()
    need |= {"ours_bf16"} if "amp_bf16_effect" in metric_names else set()
    need |= {"ours_pil_fed"} if "uint8_in_memory_effect" in metric_names else set()
    need |= {v for v, m in LEVERS.items() if m in metric_names}
    return tuple(v for v in TRAIN_VARIANTS if v in need)


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


def bench_train(
    work_dir: Path, metric_names: set[str], *, warmup: int, steps_per_round: int, rounds: int, limit: int = BENCH_IMAGES
) -> dict:
    """Measure the requested training metrics on the 64² DCGAN; returns values and the raw per-round img/s."""
    cfg = dcgan64_config()
    cfg = with_overrides(cfg, data={"limit": limit})
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)  # as train() sets it
    data = in_memory_uint8(prepared_dataset(cfg.data, work_dir))
    pil_images = pil_source_images(limit)
    contestants = build_train_contestants(cfg, data, pil_images, variants_for(metric_names))
    measured = measure_alternating(
        contestants, cfg.train.batch_size, warmup=warmup, steps_per_round=steps_per_round, rounds=rounds
    )
    values, extra = train_metrics(measured, cfg), {}
    if "train_peak_fraction" in metric_names:
        threads = torch.get_num_threads()
        flops = step_flops(contestants["ours"])
        peak = fp32_peak(threads)
        achieved = flops * measured.median("ours") / cfg.train.batch_size / 1e9
        values["train_peak_fraction"] = achieved / peak["gflop_per_s"]
        values["train_gflop_per_s"] = achieved
        extra = {
            "gflop_per_step": flops / 1e9,
            "peak": peak,
            "threads": threads,
            "profile": profile_step(GanforgeStep(cfg, endless_uint8_batches(data, cfg))),
        }
    return {
        "values": values,
        **extra,
        "img_per_s_per_round": measured.img_per_s,
        "cpu_s_per_step_per_round": measured.cpu_s_per_step,
        "setting": {
            "config": "dcgan local, data 64² × 1 channel (Fashion-MNIST), ngf=ndf=64, nz=100, batch 64",
            "channels_last_default": cfg.train.channels_last,
            "amp_default": cfg.train.amp,
            "images_in_memory": limit,
            "warmup_steps": warmup,
            "steps_per_round": steps_per_round,
            "rounds": rounds,
        },
    }


def bench_compile(work_dir: Path, *, warmup: int, steps_per_round: int, rounds: int) -> dict:
    """torch.compile vs eager on the 32² small DCGAN (compile warm-up excluded), alternated in this process."""
    cfg = dcgan32_small_config()
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    data = in_memory_uint8(prepared_dataset(cfg.data, work_dir))
    t0 = time.perf_counter()
    compiled = GanforgeStep(with_overrides(cfg, train={"compile": True}), endless_uint8_batches(data, cfg))
    for _ in range(warmup):
        compiled()
    compile_seconds = time.perf_counter() - t0
    contestants = {"compiled": compiled, "eager": GanforgeStep(cfg, endless_uint8_batches(data, cfg))}
    measured = measure_alternating(
        contestants, cfg.train.batch_size, warmup=1, steps_per_round=steps_per_round, rounds=rounds
    )
    return {
        "values": {"compile_effect": measured.ratio("compiled", "eager"), "compile_warmup_s": compile_seconds},
        "img_per_s_per_round": measured.img_per_s,
        "cpu_s_per_step_per_round": measured.cpu_s_per_step,
        "setting": {
            "config": "dcgan local, data 32² × 1 channel, ngf=ndf=16, batch 64 (small, so compile "
            "warm-up and timed rounds fit the benchmark's time budget on 2 cores)",
            "warmup_steps": warmup,
            "steps_per_round": steps_per_round,
            "rounds": rounds,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``compile`` subcommand: run bench_compile and print its result as one JSON line on stdout."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["compile"])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args(argv)
    result = bench_compile(a.work_dir, warmup=a.warmup, steps_per_round=a.steps, rounds=a.rounds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
