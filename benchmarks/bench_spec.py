"""What ``benchmarks/run.py`` reports: each metric (unit, target, group) and the effort (steps, rounds,
images) of a full run and of ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass

import bench_train


@dataclass(frozen=True)
class Metric:
    """One reported number: its unit, its target (value must be >= target) and the benchmark that measures it."""

    unit: str
    target: float | None
    group: str
    what: str


METRICS: dict[str, Metric] = {
    "train_img_per_s": Metric(
        "img/s", None, "train", "DCGAN 64² (ngf=ndf=64, batch 64) through ganforge's training step"
    ),
    "train_vs_naive": Metric(
        "ratio", 1.5, "train", "ours / pytorch-examples-style loop (per-item PIL transforms, Sigmoid+BCELoss, NCHW)"
    ),
    "channels_last_effect": Metric("ratio", None, "train", "our step with / without channels_last"),
    "amp_bf16_effect": Metric("ratio", None, "train", "our step with bf16 autocast / fp32"),
    "uint8_in_memory_effect": Metric(
        "ratio", None, "train", "our step fed by in-memory uint8 / by per-item PIL conversion"
    ),
    "train_peak_fraction": Metric(
        "ratio", None, "train", "our step's fp32 FLOP/s / the CPU's fp32 FMA peak at the threads it ran on"
    ),
    "adam_foreach_effect": Metric("ratio", None, "train", "our step with Adam(foreach=True) / the for-loop Adam"),
    "adam_fused_effect": Metric("ratio", None, "train", "our step with Adam(fused=True) / the for-loop Adam"),
    "ema_foreach_effect": Metric("ratio", None, "train", "our step with the EMA as torch._foreach_lerp_ / per tensor"),
    "onednn_effect": Metric("ratio", None, "train", "our step with oneDNN (mkldnn) convolutions / without"),
    "threads_busy_over_idle": Metric(
        "ratio", 0.667, "threads", "default thread policy: img/s with a busy competitor / without (28² DCGAN)"
    ),
    "threads_default_vs_2_busy": Metric(
        "ratio", None, "threads", "with a busy competitor: default policy / 2 threads (torch's default)"
    ),
    "threads_default_vs_1_idle": Metric("ratio", None, "threads", "without the competitor: default policy / 1 thread"),
    "compile_effect": Metric(
        "ratio", None, "compile", "our step torch.compile / eager, after compile warm-up (32² small DCGAN)"
    ),
    "ddp2_vs_1": Metric("ratio", 0.9, "ddp", "train() img/s with 2 gloo ranks / 1 rank, same global batch"),
    "inception_img_per_s": Metric(
        "img/s", 20.0, "inception", "FID Inception features, default extractor (OpenVINO fp32 when installed)"
    ),
    "inception_fast_vs_torchscript": Metric(
        "ratio", None, "inception", "default extractor / optimised TorchScript reference, same batches"
    ),
    "inception_vs_naive": Metric("ratio", None, "inception", "default extractor / naive TorchScript call"),
    "inception_peak_fraction": Metric(
        "ratio",
        None,
        "inception",
        "default extractor's FLOP rate / the cores' fp32 FMA peak (FLOPs counted by torch.utils.flop_counter)",
    ),
    "fid_eval_cached_speedup": Metric("ratio", 1.8, "fid", "FID evaluation time, real statistics computed / cached"),
}


GROUP_ORDER = ("threads", "train", "compile", "ddp", "inception", "fid")


RENAMED = {"inception_speedup": "inception_vs_naive"}
"""bench_metrics' key → the metric name reported here."""


@dataclass(frozen=True)
class Effort:
    """How many steps and images each benchmark spends: the full run, or --quick for tests."""

    train_warmup: int
    train_steps: int
    train_rounds: int
    train_images: int
    threads_warmup: int
    threads_steps: int
    threads_rounds: int
    compile_warmup: int
    compile_steps: int
    compile_rounds: int
    compile_cap_s: int
    ddp_warmup: int
    ddp_steps: int
    ddp_repeats: int
    inception_n: int
    fid_n: int


# One step per round and many rounds: the finer the alternation, the better it cancels other jobs' load.
FULL = Effort(
    train_warmup=2,
    train_steps=1,
    train_rounds=8,
    train_images=bench_train.BENCH_IMAGES,
    threads_warmup=2,
    threads_steps=8,
    threads_rounds=6,
    compile_warmup=3,
    compile_steps=4,
    compile_rounds=8,
    compile_cap_s=420,
    ddp_warmup=4,
    ddp_steps=20,
    ddp_repeats=3,
    inception_n=200,
    fid_n=200,
)


QUICK = Effort(
    train_warmup=1,
    train_steps=1,
    train_rounds=2,
    train_images=128,
    threads_warmup=1,
    threads_steps=1,
    threads_rounds=2,
    compile_warmup=2,
    compile_steps=2,
    compile_rounds=2,
    compile_cap_s=240,
    ddp_warmup=2,
    ddp_steps=4,
    ddp_repeats=1,
    inception_n=20,
    fid_n=50,
)
