"""Inception feature throughput and the real-statistics cache speedup, as JSON.

    python benchmarks/bench_metrics.py [--n 100] [--fid-n 200] [--dataset DIR]

Without --dataset the cache benchmark uses the first --fid-n Fashion-MNIST test images.

Throughput is wall-clock images/s of 28×28 grey images (Fashion-MNIST size) through the whole
extractor: TF1 bilinear resize to 299, normalisation, Inception. The default extractor (the fast
path: OpenVINO fp32 when installed), the optimised TorchScript reference (frozen, conv+BN folded,
channels_last) and the naive TorchScript call run in alternating batches, the order reversed
every batch, so that load from other processes hits all alike; ratios are medians of per-batch
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_train
import numpy as np
import torch

from ganforge import metrics
from ganforge.config import DEFAULT_IDX_DIR, DataConfig, EvalConfig
from ganforge.weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice, inception_weights_path

BATCH_SIZE = 50


def random_gray_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def naive_features(net: torch.jit.ScriptModule, images: torch.Tensor) -> torch.Tensor:
    """The plain call: NCHW fp32, no freezing, no folding, autograd off."""
    with torch.no_grad():
        return net(metrics.uint8_to_inception_input(images).contiguous())


def inception_flops(net: torch.jit.ScriptModule) -> float:
    """FLOPs of one 299² image through the network, counted by torch.utils.flop_counter on the reference
    TorchScript module (convolutions and the matrix product; a multiply-add is 2 FLOPs). Pooling, BatchNorm
    and activations are left out: they add well under 1 %."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 299, 299))
    return float(counter.get_total_flops())


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def bench_inception(n: int = 100) -> dict:
    """Images/s of the default extractor (the fast path), the optimised TorchScript and the naive call.

    ``inception_fast_vs_torchscript`` is the fast path against the TorchScript reference it
    replaces, ``inception_speedup`` against the naive call; max abs feature differences are
    against the naive call's output.
    """
    choice = InceptionChoice(EXTRACTOR_TORCHSCRIPT, inception_weights_path(fetch=True))
    default = metrics.feature_extractor(choice, "cpu")
    torchscript = metrics.feature_extractor(choice, "cpu", "torchscript")
    naive = metrics.load_torchscript(choice.path)
    contenders = {"fast": default, "torchscript": torchscript, "naive": lambda b: (naive_features(naive, b),)}
    images = torch.from_numpy(random_gray_images(n))
    warm = images[:2]
    for fn in contenders.values():  # conversion/compilation, freezing and the JIT's profiling runs
        fn(warm), fn(warm)
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in contenders}
    for i, start in enumerate(range(0, n, BATCH_SIZE)):
        batch = images[start : start + BATCH_SIZE]
        for name in list(contenders) if i % 2 == 0 else reversed(contenders):
            (out,), dt = timed(contenders[name], batch)
            seconds[name].append(dt / len(batch))  # per image
            outputs[name].append(out)
    sizes = [len(images[start : start + BATCH_SIZE]) for start in range(0, n, BATCH_SIZE)]
    rate = {name: n / sum(s * size for s, size in zip(v, sizes)) for name, v in seconds.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(sb / sa for sa, sb in zip(seconds[a], seconds[b]))

    reference = torch.cat(outputs["naive"])
    max_diff = {name: (torch.cat(outputs[name]) - reference).abs().max().item() for name in ("fast", "torchscript")}
    flops = inception_flops(naive)
    peak = bench_train.fp32_peak(torch.get_num_threads())
    return {
        "inception_img_per_s": round(rate["fast"], 2),
        "inception_torchscript_img_per_s": round(rate["torchscript"], 2),
        "inception_naive_img_per_s": round(rate["naive"], 2),
        "inception_fast_vs_torchscript": round(ratio("fast", "torchscript"), 2),
        "inception_speedup": round(ratio("fast", "naive"), 2),
        "inception_runtime": default.runtime_name("cpu"),
        "inception_peak_fraction": round(rate["fast"] * flops / 1e9 / peak["gflop_per_s"], 3),
        "inception_ceiling": {  # what the cores can do at all: the fp32 peak over the network's FLOPs per image
            "gflop_per_img": round(flops / 1e9, 3),
            "peak": peak,
            "img_per_s_at_peak": round(peak["gflop_per_s"] / (flops / 1e9), 2),
            "img_per_s": round(rate["fast"], 2),
            "runtime": default.runtime_name("cpu"),
        },
        "inception_img_per_s_per_batch": {name: [round(1 / s, 2) for s in v] for name, v in seconds.items()},
        "inception_max_abs_feature_diff": max_diff["fast"],
        "inception_torchscript_max_abs_feature_diff": max_diff["torchscript"],
        "n": n,
        "batch_size": BATCH_SIZE,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def bench_fid_cached(dataset_dir: str | os.PathLike, n: int) -> dict:
    """time(first evaluation, real features computed) / time(second, real features cached).

    Both evaluations extract the same n fake images; the first also extracts n real ones, so
    the ideal speedup is about 2 when extraction dominates.
    """
    from ganforge.data import load_dataset

    choice = InceptionChoice(EXTRACTOR_TORCHSCRIPT, inception_weights_path(fetch=True))
    fake = np.ascontiguousarray(load_dataset(dataset_dir).images[:n, :, :, ::-1])  # mirrored reals stand in for fakes
    cfg = EvalConfig(n_samples=n, batch_size=BATCH_SIZE, kid_subset_size=min(1000, n), kid_subsets=100)
    metrics.feature_extractor(choice, "cpu")(torch.from_numpy(fake[:2]))  # load and freeze outside the timing
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as cache:
        first = metrics.evaluate_images(fake, dataset_dir, cfg, cache, choice)
        second = metrics.evaluate_images(fake, dataset_dir, cfg, cache, choice)
    assert not first["real_stats_cached"] and second["real_stats_cached"]
    return {
        "fid_eval_first_s": round(first["seconds"], 2),
        "fid_eval_cached_s": round(second["seconds"], 2),
        "fid_eval_cached_speedup": round(first["seconds"] / second["seconds"], 2),
        "fid_n": n,
        "fid_n_real": second["n_real"],
        "fid": second["fid"],
    }


def prepare_fashion_test(out: Path, n: int) -> Path:
    from ganforge.data import prepare

    prepare(DataConfig(source=DEFAULT_IDX_DIR, resolution=28, channels=1, limit=n), out, split="test")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images for the throughput benchmark")
    parser.add_argument("--dataset", type=Path, help="prepared dataset dir for the cache benchmark")
    parser.add_argument("--fid-n", type=int, default=200, help="images per side for the cache benchmark")
    args = parser.parse_args(argv)
    result = bench_inception(args.n)
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-data-") as tmp:
        dataset = args.dataset or prepare_fashion_test(Path(tmp) / "fashion-test", args.fid_n)
        result.update(bench_fid_cached(dataset, args.fid_n))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
