"""gpu_check's bench part: ganforge's training loop against a pytorch/examples-style loop, bf16,
batch size and compile effects, and the fraction of the GPU's bf16 peak."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from gpu_check_run import Budget, Report

BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks by device name (NVIDIA data sheets, SXM parts); others report no fraction."""


class ExamplesNetG(torch.nn.Module):
    """pytorch/examples dcgan/main.py's Generator (nc = 1)."""

    def __init__(self, nz: int, ngf: int, nc: int = 1):
        super().__init__()
        nn = torch.nn
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.main(x)


class ExamplesNetD(torch.nn.Module):
    """pytorch/examples dcgan/main.py's Discriminator (nc = 1), Sigmoid included."""

    def __init__(self, ndf: int, nc: int = 1):
        super().__init__()
        nn = torch.nn
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def examples_loop_img_per_s(
    images: torch.Tensor, device: str, batch: int, nz: int, width: int, warmup: int, steps: int
) -> float:
    """pytorch/examples dcgan/main.py's loop: batches on the host moved per step, noise drawn on the device,
    Sigmoid + BCELoss, Adam(2e-4, β1 0.5), and its per-step ``.item()`` reads (the log line)."""
    torch.manual_seed(0)
    G, D = ExamplesNetG(nz, width).to(device), ExamplesNetD(width).to(device)
    criterion = torch.nn.BCELoss()
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = images.float().div(127.5).sub(1.0)  # ToTensor + Normalize once: the examples' workers do it in parallel
    n_batches = len(data) // batch

    def step(i: int) -> None:
        real = data[(i % n_batches) * batch : (i % n_batches + 1) * batch].to(device)
        D.zero_grad()
        label = torch.full((batch,), 1.0, device=device)
        err_real = criterion(D(real), label)
        err_real.backward()
        fake = G(torch.randn(batch, nz, 1, 1, device=device))
        label.fill_(0.0)
        out = D(fake.detach())
        err_fake = criterion(out, label)
        err_fake.backward()
        opt_d.step()
        G.zero_grad()
        label.fill_(1.0)
        out2 = D(fake)
        err_g = criterion(out2, label)
        err_g.backward()
        opt_g.step()
        _ = (err_real + err_fake).item(), err_g.item(), out.mean().item(), out2.mean().item()

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ganforge_img_per_s(data_dir: Path, sets: list[str], warmup: int, steps: int, work: Path) -> float:
    """img/s of ganforge's ``train()`` over the steps after ``warmup`` (timed between two log points)."""
    from ganforge.config import build_config
    from ganforge.train import train

    cfg = build_config(
        "dcgan",
        "full",
        [*sets, f"train.max_steps={warmup + steps}", f"train.log_every={warmup}", "train.checkpoint_every=1000000"],
    )
    marks: dict[int, float] = {}

    def on_metrics(step: int, _m: dict) -> None:
        sync("cuda" if torch.cuda.is_available() else "cpu")
        marks[step] = time.perf_counter()

    out = work / "bench-run"
    shutil.rmtree(out, ignore_errors=True)
    train(cfg, data_dir, out, on_metrics=on_metrics)
    first, last = min(marks), max(marks)
    return (last - first) * cfg.train.batch_size / (marks[last] - marks[first])


def bf16_peak_fraction(img_per_s: float, batch: int, resolution: int) -> dict:
    """FLOPs of one image's training step (dcgan, the full profile) × img/s over the device's bf16 peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from ganforge.config import build_config
    from ganforge.train import DistInfo, _Context, build_training_state, d_step, g_step

    cfg = build_config("dcgan", "full", [f"train.batch_size={batch}", f"data.resolution={resolution}"])
    dist = DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    G, D, _, opt_g, opt_d = build_training_state(cfg, dist.device)
    ctx = _Context(cfg, dist)
    real = torch.zeros(batch, 1, resolution, resolution, device=dist.device)
    z = torch.randn(batch, cfg.model.nz, device=dist.device)
    with FlopCounterMode(display=False) as counter:
        d_step(G, D, opt_d, real, z, ctx)
        g_step(G, D, opt_g, z, ctx)
    flop_per_img = counter.get_total_flops() / batch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return {
        "gflop_per_img": flop_per_img / 1e9,
        "device": name,
        "bf16_peak_tflops": peak,
        "fraction": (img_per_s * flop_per_img / (peak * 1e12)) if peak else None,
    }


def check_bench(args, work: Path, data: dict, budget: Budget, report: Report) -> dict:
    from ganforge.config import build_config
    from ganforge.data import load_dataset, prepare

    smoke = args.smoke
    warm, steps = (2, 3) if smoke else (30, 200)
    width, batch = (8, 8) if smoke else (64, 64)
    data64 = work / "data" / f"bench64-{'smoke' if smoke else 'full'}"
    if not (data64 / "manifest.json").exists():
        cfg = build_config("dcgan", "full", ["data.resolution=64", f"data.limit={512 if smoke else 20000}"])
        prepare(type(cfg.data)(**{**cfg.data.__dict__, "source": str(args.idx)}), data64, split="test")
    images = torch.from_numpy(np.asarray(load_dataset(data64).images))
    ex_sets = ["data.resolution=64", f"model.ngf={width}", f"model.ndf={width}", f"train.batch_size={batch}"]
    results: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        if budget.left() < (5 if smoke else 20):
            report.add("bench", name, "cut", "no time left")
            return
        t0 = time.perf_counter()
        try:
            results[name] = fn()
            report.add("bench", name, "ok", f"{results[name]:,.0f} img/s", time.perf_counter() - t0)
        except Exception as e:  # a failing contestant is a finding; the others still run
            report.add("bench", name, "fail", f"{type(e).__name__}: {str(e)[:120]}", time.perf_counter() - t0)

    dev = args.device
    timed("examples loop fp32 64²/b64", lambda: examples_loop_img_per_s(images, dev, batch, 100, width, warm, steps))
    timed("ganforge fp32 64²/b64", lambda: ganforge_img_per_s(data64, [*ex_sets, "train.amp=off"], warm, steps, work))
    timed("ganforge bf16 64²/b64", lambda: ganforge_img_per_s(data64, [*ex_sets, "train.amp=bf16"], warm, steps, work))
    big = [s.replace(f"train.batch_size={batch}", f"train.batch_size={batch * 8}") for s in ex_sets]
    big_steps = max(2, steps // 4)
    timed("ganforge bf16 64²/b512", lambda: ganforge_img_per_s(data64, [*big, "train.amp=bf16"], warm, big_steps, work))
    timed("ganforge full 28²/b128 (bf16)", lambda: ganforge_img_per_s(data["train"], [], warm, steps, work))
    # the full profile's train.amp default should follow this ratio
    fp32 = ["train.amp=off"]
    timed("ganforge full 28²/b128 fp32", lambda: ganforge_img_per_s(data["train"], fp32, warm, steps, work))
    if smoke:  # last, as it may run past the part's budget; Inductor's C++ compile takes minutes on a small CPU
        report.add("bench", "ganforge compile fp32 64²/b64", "skipped", "not in --smoke")
    else:
        compiled = [*ex_sets, "train.amp=off", "train.compile=true"]
        timed("ganforge compile fp32 64²/b64", lambda: ganforge_img_per_s(data64, compiled, warm, steps, work))
    ratios = {
        "ganforge_vs_examples": ("ganforge fp32 64²/b64", "examples loop fp32 64²/b64", 4.0),
        "bf16_vs_fp32": ("ganforge bf16 64²/b64", "ganforge fp32 64²/b64", None),
        "full_bf16_vs_fp32": ("ganforge full 28²/b128 (bf16)", "ganforge full 28²/b128 fp32", None),
        "batch512_vs_64_bf16": ("ganforge bf16 64²/b512", "ganforge bf16 64²/b64", None),
        "compile_vs_eager": ("ganforge compile fp32 64²/b64", "ganforge fp32 64²/b64", None),
    }
    out = {"img_per_s": results, "ratios": {}}
    for name, (a, b, goal) in ratios.items():
        if a in results and b in results:
            r = results[a] / results[b]
            out["ratios"][name] = r
            status = "ok" if goal is None or r >= goal else "miss"
            report.add("bench", name, status, f"{r:.2f}×" + (f" (goal ≥ {goal:g}×)" if goal else ""))
    if "ganforge full 28²/b128 (bf16)" in results:
        cfg = build_config("dcgan", "full")
        peak = bf16_peak_fraction(results["ganforge full 28²/b128 (bf16)"], cfg.train.batch_size, 28)
        out["peak"] = peak
        frac = peak["fraction"]
        report.add(
            "bench",
            "bf16 peak fraction (full)",
            "ok" if frac is not None else "skipped",
            f"{frac:.2%} of {peak['bf16_peak_tflops']} TFLOP/s"
            if frac is not None
            else f"no peak for {peak['device']}",
        )
    return out
