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

The steps live in bench_steps.py, the measuring in bench_measure.py; bench_train re-exports them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_measure import (
    FMA_UNITS,
    OP_GROUPS,
    Measured,
    format_profile,
    fp32_peak,
    measure_alternating,
    profile_step,
    step_flops,
)
from bench_steps import (
    BENCH_IMAGES,
    GanforgeStep,
    NaiveStep,
    PILImageDataset,
    dcgan32_small_config,
    dcgan64_config,
    endless_pil_batches,
    endless_uint8_batches,
    in_memory_uint8,
    pil_source_images,
    prepared_dataset,
    update_ema_foreach,
    with_adam,
    with_ema,
    without_onednn,
)

from ganforge.config import PipelineConfig, build_config, with_overrides
from ganforge.train import update_ema

__all__ = [
    "BENCH_IMAGES",
    "FMA_UNITS",
    "GanforgeStep",
    "LEVERS",
    "Measured",
    "NaiveStep",
    "OP_GROUPS",
    "PILImageDataset",
    "TRAIN_VARIANTS",
    "bench_compile",
    "bench_train",
    "build_config",
    "build_train_contestants",
    "dcgan32_small_config",
    "dcgan64_config",
    "endless_pil_batches",
    "endless_uint8_batches",
    "format_profile",
    "fp32_peak",
    "in_memory_uint8",
    "main",
    "measure_alternating",
    "pil_source_images",
    "prepared_dataset",
    "profile_step",
    "step_flops",
    "train_metrics",
    "update_ema",
    "update_ema_foreach",
    "variants_for",
    "with_adam",
    "with_ema",
    "without_onednn",
]


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
