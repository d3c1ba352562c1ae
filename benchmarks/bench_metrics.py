"""Inception feature throughput and the real-statistics cache speedup, as JSON.

    python benchmarks/bench_metrics.py [--n 100] [--fid-n 200] [--dataset DIR]

Without --dataset the cache benchmark uses the first --fid-n Fashion-MNIST test images.

Throughput is wall-clock images/s of 28×28 grey images (Fashion-MNIST size) through the whole
extractor: TF1 bilinear resize to 299, normalisation, Inception. The optimised and the naive
extractor run in alternating batches so that load from other processes hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

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


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def bench_inception(n: int = 100) -> dict:
    """Images/s of the optimised extractor and of the naive TorchScript call, and their ratio."""
    choice = InceptionChoice(EXTRACTOR_TORCHSCRIPT, inception_weights_path(fetch=True))
    optimised = metrics.feature_extractor(choice, "cpu")
    naive = metrics.load_torchscript(choice.path)
    images = torch.from_numpy(random_gray_images(n))
    warm = images[:2]
    optimised(warm), optimised(warm), naive_features(naive, warm)  # freezing and the JIT's profiling runs
    seconds = {"optimised": 0.0, "naive": 0.0}
    max_abs_diff = 0.0
    for start in range(0, n, BATCH_SIZE):
        batch = images[start:start + BATCH_SIZE]
        (fast,), dt_fast = timed(optimised, batch)
        plain, dt_plain = timed(naive_features, naive, batch)
        seconds["optimised"] += dt_fast
        seconds["naive"] += dt_plain
        max_abs_diff = max(max_abs_diff, (fast - plain).abs().max().item())
    optimised_rate, naive_rate = n / seconds["optimised"], n / seconds["naive"]
    return {
        "inception_img_per_s": round(optimised_rate, 2),
        "inception_naive_img_per_s": round(naive_rate, 2),
        "inception_speedup": round(optimised_rate / naive_rate, 2),
        "inception_max_abs_feature_diff": max_abs_diff,
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
