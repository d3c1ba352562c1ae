"""`make gpu-check`: the GPU path end to end on one machine, one table, build/gpu-check.json.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--quality] [--parts presets,bench,fid]
                                   [--idx DIR] [--out build/gpu-check.json] [--budget 540]

Parts, each within its own share of the budget (a part, or a command in it, that would run past it is
cut and reported as such):

- presets: every image preset trains a few hundred steps at the ``full`` profile through the core CLI
  (``python -m ganforge.cli``), is evaluated (FID/KID; cyclegan: its translation scores) and generates
  (cyclegan: translates) from its checkpoint, on the device.
- bench: ganforge's training loop (``train()``) against a pytorch/examples-style loop at the examples'
  configuration (64², batch 64, nz 100, ngf = ndf = 64), bf16 against fp32, batch 512 against 64, compile
  against eager; every ratio from one run. The fraction of the GPU's bf16 peak at the ``full`` profile's
  batch (FLOPs counted by torch.utils.flop_counter, the peak from the device name).
- fid: Inception features img/s on the device in fp32, their largest difference from the CPU TorchScript
  reference, and FID-10k end to end (``ganforge evaluate --n 10000``) with the real statistics cached.
- quality (``--quality``, not in the 9 minutes): dcgan at ``full`` trained ~7 minutes, its FID-10k.

What it needs beside the checkout: the core's Python packages (torch, torchvision, numpy, scipy, pillow,
tqdm, filelock) and torch-fidelity (pure Python: ``--pylib`` puts a copied package on the path), the
Fashion-MNIST IDX files (``--idx``) and the Inception TorchScript (``GANFORGE_INCEPTION_WEIGHTS``). No
network, no MLflow: registering is the platform layer's and is reported as skipped without it.

``--smoke`` (with ``--device cpu``): the same commands at the ``tiny`` profile, 2 steps, a few images —
what tests/test_gpu_check.py runs so that this command cannot rot on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ganforge.fileio import atomic_write_text  # noqa: E402

IMAGE_PRESETS = ("gan", "dcgan", "wgan-gp", "sngan", "cdcgan", "stylegan", "cyclegan")
PART_SHARES = {"presets": 0.7, "bench": 0.2, "fid": 0.1}
"""Each part's share of --budget (seconds), in this order; what a part leaves unused goes to the next. On an H200
(docs/gpu.md) a preset's three commands took 40-60 s, most of it process start-up; the bench ~60 s, fid ~35 s."""
QUALITY_SECONDS = 420
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks by device name (NVIDIA data sheets, SXM parts); others report no fraction."""
DEFAULT_IDX = "/usr/share/datasets/fashion-mnist"


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, part: str, item: str, status: str, value: str = "", seconds: float | None = None, **extra):
        row = {"part": part, "item": item, "status": status, "value": value, "seconds": seconds, **extra}
        self.rows.append(row)
        mark = {"ok": "✓", "fail": "✗", "skipped": "-", "cut": "✗ (time)"}.get(status, status)
        print(f"[gpu-check] {part:8} {item:32} {mark} {value}", file=sys.stderr, flush=True)
        return row

    def table(self) -> str:
        lines = [("part", "item", "status", "value", "s")]
        for r in self.rows:
            s = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append((r["part"], r["item"], r["status"], r["value"], s))
        widths = [max(len(str(line[i])) for line in lines) for i in range(5)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def cli(args: list[str], env: dict, timeout: float) -> tuple[int, float, str, str]:
    """``python -m ganforge.cli ARGS``: (exit status, seconds, stdout, stderr's tail); 124 when cut at timeout."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ganforge.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout),
        )
        return done.returncode, time.perf_counter() - t0, done.stdout, done.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return 124, time.perf_counter() - t0, "", err[-2000:]


def last_json(stdout: str) -> dict:
    """The JSON object a ganforge command printed last (pretty-printed or on one line)."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout[stdout.find("{") :]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def prepare_data(work: Path, idx: Path, env: dict, profile: str, budget: Budget, report: Report) -> dict:
    """Prepared datasets from the IDX files: train (the test split when no train files came), test, and
    cyclegan's two domains of each; 64² for the bench."""
    have_train = (idx / "train-images-idx3-ubyte.gz").exists() or (idx / "train-images-idx3-ubyte").exists()
    data = {}
    jobs = [("test", "dcgan", "test", None), ("train", "dcgan", "train" if have_train else "test", None)]
    jobs += [(f"{d}-{s}", "cyclegan", s, d) for d in ("a", "b") for s in ("train", "test")]
    for name, preset, split, domain in jobs:
        if domain and split == "train" and not have_train:
            split = "test"
        out = work / "data" / f"{name}-{profile}"
        args = ["prep", "--preset", preset, "--profile", profile, "--source", str(idx), "--split", split]
        args += ["--out", str(out)] + (["--domain", domain] if domain else [])
        if not (out / "manifest.json").exists():
            rc, secs, _, err = cli(args, env, budget.left())
            if rc != 0:
                report.add("data", f"prep {name}", "fail", one_line(err), secs)
                raise RuntimeError(f"prep {name} failed: {one_line(err)}")
        data[name] = out
    report.add("data", "Fashion-MNIST", "ok", f"train split: {'train' if have_train else 'test (no train IDX)'}")
    return data


def check_presets(args, work: Path, data: dict, env: dict, budget: Budget, report: Report) -> dict:
    profile, runs = ("tiny" if args.smoke else "full"), {}
    steps = 2 if args.smoke else args.steps
    n_eval = 16 if args.smoke else 2000
    presets = [p for p in args.presets if p in IMAGE_PRESETS]
    for i, preset in enumerate(presets):
        share = budget.left() / max(1, len(presets) - i)  # an equal share of what is left
        t0 = time.monotonic()
        run = work / "runs" / f"{preset}-{profile}"
        shutil.rmtree(run, ignore_errors=True)
        cyc = preset == "cyclegan"
        data_args = ["--data", str(data["a-train"]), "--data-b", str(data["b-train"])] if cyc else []
        data_args = data_args or ["--data", str(data["train"])]
        sets = [f"train.max_steps={steps}", f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}"]
        train = ["train", "--preset", preset, "--profile", profile, *data_args, "--out", str(run)]
        rc, secs, out, err = cli(train + [a for s in sets for a in ("--set", s)], env, share)
        result = last_json(out)
        ok = rc == 0
        report.add(
            "presets",
            f"{preset} train {steps} steps",
            "ok" if ok else ("cut" if rc == 124 else "fail"),
            (f"{result['img_per_s']} img/s" if "img_per_s" in result else f"step {result.get('step')}")
            if ok
            else one_line(err),
            secs,
        )
        runs[preset] = {"train": result, "ok": ok}
        if not ok:
            continue
        ckpt = str(run / "checkpoint.pt")
        if cyc:
            ev = ["evaluate", "--checkpoint", ckpt, "--data", str(data["a-test"]), "--data-b", str(data["b-test"])]
        else:
            ev = ["evaluate", "--checkpoint", ckpt, "--data", str(data["test"]), "--n", str(n_eval)]
        rc, secs, out, err = cli(ev, env, share - (time.monotonic() - t0))
        metrics = last_json(out)
        score = metrics.get("fid") if not cyc else metrics.get("a2b", metrics).get("fid", metrics.get("fid_a2b"))
        report.add(
            "presets",
            f"{preset} evaluate" + ("" if cyc else f" FID-{n_eval}"),
            "ok" if rc == 0 else ("cut" if rc == 124 else "fail"),
            (f"FID {score:.2f}" if isinstance(score, float) else "scored") if rc == 0 else one_line(err),
            secs,
        )
        runs[preset]["evaluate"] = metrics
        device = ["--device", args.device]
        if cyc:
            inputs = work / "translate-in"
            write_pngs(data["a-test"], inputs, 4)
            gen = ["translate", "--checkpoint", str(run), "--direction", "a2b", "--input", str(inputs)]
            gen += ["--out", str(run / "translated"), *device]
        else:
            gen = ["generate", "--model", ckpt, "-n", "16", "--out", str(run / "generated"), *device]
        rc, secs, out, err = cli(gen, env, share - (time.monotonic() - t0))
        report.add(
            "presets",
            f"{preset} {'translate' if cyc else 'generate'} ({args.device})",
            "ok" if rc == 0 else ("cut" if rc == 124 else "fail"),
            "" if rc == 0 else one_line(err),
            secs,
        )
    if importlib.util.find_spec("mlflow") is None:
        report.add("presets", "register", "skipped", "mlflow is not installed (the platform layer's step)")
    return runs


def write_pngs(dataset: Path, out: Path, n: int) -> None:
    from PIL import Image

    from ganforge.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(np.asarray(load_dataset(dataset).images[:n])):
        Image.fromarray(img[0]).save(out / f"{i:03d}.png")


# ---- bench ---------------------------------------------------------------------------------------------------


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


# ---- FID ------------------------------------------------------------------------------------------------------


def check_fid(args, work: Path, data: dict, runs: dict, env: dict, budget: Budget, report: Report) -> dict:
    from ganforge.data import load_dataset
    from ganforge.metrics import images_to_features
    from ganforge.weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice, inception_weights_path

    n = 16 if args.smoke else 10000
    test = np.asarray(load_dataset(data["test"]).images[:n])
    choice = InceptionChoice(EXTRACTOR_TORCHSCRIPT, inception_weights_path())
    out: dict = {}
    images_to_features(test[:50], 50, choice, device=args.device, workers=1, runtime="torchscript")  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    feats = images_to_features(test, 50 if args.smoke else 250, choice, device=args.device, workers=1)
    sync(args.device)
    secs = time.perf_counter() - t0
    out["features_img_per_s"] = len(test) / secs
    goal = 5000
    report.add(
        "fid",
        f"features fp32 ({args.device}, {len(test)} img)",
        "ok" if args.smoke or out["features_img_per_s"] >= goal else "miss",
        f"{out['features_img_per_s']:,.0f} img/s (goal ≥ {goal:,})",
        secs,
    )
    ref = images_to_features(test[:16], 16, choice, device="cpu", workers=1, runtime="torchscript")
    diff = float(np.abs(ref - feats[:16]).max())
    out["max_abs_diff_vs_cpu"] = diff
    report.add("fid", "features vs CPU reference", "ok" if diff <= 1e-4 else "miss", f"max |Δ| {diff:.2e} (≤ 1e-4)")
    if not runs.get("dcgan", {}).get("ok"):
        report.add("fid", f"FID-{n} end to end", "skipped", "no dcgan checkpoint (the presets part did not train it)")
        return out
    ckpt = str(work / "runs" / f"dcgan-{'tiny' if args.smoke else 'full'}" / "checkpoint.pt")
    ev = ["evaluate", "--checkpoint", ckpt, "--data", str(data["test"]), "--n", str(n)]
    attempts = ("cached real statistics",) if args.smoke else ("fills the real-feature cache", "cached real statistics")
    for attempt in attempts:  # --smoke: one pass (its real features were cached by the presets part)
        rc, secs, stdout, err = cli(ev, env, budget.left())
        if rc != 0:
            report.add("fid", f"FID-{n} ({attempt})", "fail" if rc != 124 else "cut", one_line(err), secs)
            return out
    metrics = last_json(stdout)
    out["fid_end_to_end_s"], out["fid"] = secs, metrics.get("fid")
    goal_s = 10
    report.add(
        "fid",
        f"FID-{n} end to end, cached real",
        "ok" if args.smoke or secs <= goal_s else "miss",
        f"{secs:.1f} s (goal ≤ {goal_s} s), FID {metrics.get('fid', float('nan')):.2f}",
        secs,
    )
    return out


def check_quality(args, work: Path, data: dict, env: dict, report: Report, bench: dict) -> dict:
    """dcgan at ``full`` for about QUALITY_SECONDS per seed (steps from the measured speed), FID-10k."""
    speed = bench.get("img_per_s", {}).get("ganforge full 28²/b128 (bf16)") or 5000.0
    steps = 4 if args.smoke else int(QUALITY_SECONDS * 0.8 * speed / 128)
    n = 64 if args.smoke else 10000
    rows = {}
    for seed in args.quality_seeds:
        run = work / "quality" / f"dcgan-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        sets = [f"train.max_steps={steps}", f"train.seed={seed}", "train.checkpoint_every=100000", "train.epochs=1000"]
        train = ["train", "--preset", "dcgan", "--profile", "tiny" if args.smoke else "full"]
        train += ["--data", str(data["train"]), "--out", str(run)]
        rc, secs, out, err = cli(train + [a for s in sets for a in ("--set", s)], env, QUALITY_SECONDS + 120)
        if rc != 0:
            report.add("quality", f"dcgan seed {seed}", "fail", one_line(err), secs)
            continue
        ev = ["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data["test"]), "--n", str(n)]
        rc2, secs2, out2, err2 = cli(ev, env, 300)
        fid = last_json(out2).get("fid")
        rows[seed] = {"steps": steps, "train_s": secs, "fid": fid}
        report.add(
            "quality",
            f"dcgan full seed {seed}, {steps} steps",
            "ok" if rc2 == 0 else "fail",
            f"FID-{n} {fid:.2f} (vs test split, tf1-bilinear)" if rc2 == 0 else one_line(err2),
            secs + secs2,
        )
    fids = [r["fid"] for r in rows.values() if r.get("fid") is not None]
    if fids:
        report.add("quality", "mean over seeds", "ok", f"FID-{n} {statistics.mean(fids):.2f} ({len(fids)} seed(s))")
    return rows


BUNDLE_PART_BYTES = 60 * 2**20
IDX_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def make_bundle(out: Path, weights: Path, idx: Path) -> list[Path]:
    """What a GPU machine without network needs, in folders of ≤ 60 MiB each (one folder per carry):
    1/ the Inception TorchScript's first half and torch_fidelity (pure Python), 2/ the Fashion-MNIST train IDX
    files, 3/ the TorchScript's second half and the test IDX files. ``--bundle`` joins them again."""
    import torch_fidelity

    shutil.rmtree(out, ignore_errors=True)
    dirs = [out / str(i) for i in (1, 2, 3)]
    for d in dirs:
        d.mkdir(parents=True)
    blob = weights.read_bytes()
    half = len(blob) // 2 + 1
    (dirs[0] / "inception.part1").write_bytes(blob[:half])
    (dirs[2] / "inception.part2").write_bytes(blob[half:])
    shutil.copytree(Path(torch_fidelity.__file__).parent, dirs[0] / "pylib" / "torch_fidelity")
    for name in TRAIN_IDX_FILES:
        shutil.copy(idx / name, dirs[1] / name)
    for name in IDX_FILES:
        shutil.copy(idx / name, dirs[2] / name)
    import hashlib

    (dirs[2] / "inception.sha1").write_text(hashlib.sha1(blob).hexdigest() + "\n")
    for d in dirs:
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        if size > BUNDLE_PART_BYTES:
            raise SystemExit(f"gpu-check: {d} holds {size / 2**20:.1f} MiB, more than one carry allows (60 MiB)")
    return dirs


def join_bundle(dirs: list[Path], work: Path) -> tuple[Path, Path, Path | None]:
    """(Inception TorchScript, IDX folder, pylib folder or None) from the folders ``make_bundle`` wrote."""
    import hashlib

    def find(name: str) -> Path | None:
        return next((d / name for d in dirs if (d / name).exists()), None)

    parts = [find("inception.part1"), find("inception.part2")]
    if None in parts:
        raise SystemExit(f"gpu-check: --bundle {' '.join(map(str, dirs))} lacks inception.part1 or .part2")
    weights = work / "inception" / "default_1.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    blob = parts[0].read_bytes() + parts[1].read_bytes()
    sha = find("inception.sha1")
    if sha is not None and hashlib.sha1(blob).hexdigest() != sha.read_text().strip():
        raise SystemExit("gpu-check: the joined Inception file's sha1 differs from inception.sha1; carry it again")
    weights.write_bytes(blob)
    idx = work / "fashion-mnist"
    idx.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES + TRAIN_IDX_FILES:
        if (src := find(name)) is not None:
            shutil.copy(src, idx / name)
    pylib = find("pylib")
    return weights, idx, pylib


def environment(args) -> dict:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "device": args.device}
    if args.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny profile, 2 steps, a few images: checks the machinery")
    p.add_argument("--parts", default="presets,bench,fid", help="comma-separated: presets, bench, fid")
    p.add_argument("--presets", default=",".join(IMAGE_PRESETS), help="the presets part's presets")
    p.add_argument("--steps", type=int, default=200, help="training steps per preset (presets part)")
    p.add_argument("--quality", action="store_true", help=f"also the quality row (~{QUALITY_SECONDS} s a seed)")
    p.add_argument("--quality-seeds", default="0", help="comma-separated seeds for the quality row")
    p.add_argument("--idx", type=Path, default=Path(os.environ.get("GANFORGE_FASHION_IDX", DEFAULT_IDX)))
    p.add_argument("--pylib", type=Path, help="a folder of extra pure-Python packages (torch_fidelity) to import")
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "gpu-check-work")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-check.json")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for presets + bench + fid (default 9 min)")
    p.add_argument("--bundle", type=Path, nargs="+", help="folders from `make gpu-bundle`, carried here: joined first")
    p.add_argument("--make-bundle", type=Path, help="write the carry folders (1/, 2/, 3/) here and stop")
    args = p.parse_args(argv)
    if args.make_bundle:
        from ganforge.weights import inception_weights_path

        for d in make_bundle(args.make_bundle, inception_weights_path(), args.idx):
            print(f"{d}: {sum(f.stat().st_size for f in d.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
        return 0
    if args.bundle:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        weights_file, args.idx, pylib = join_bundle(args.bundle, args.work_dir)
        os.environ["GANFORGE_INCEPTION_WEIGHTS"] = str(weights_file)
        args.pylib = args.pylib or pylib
    args.presets = [s for s in args.presets.split(",") if s]
    args.quality_seeds = [int(s) for s in args.quality_seeds.split(",") if s]
    parts = [s for s in args.parts.split(",") if s]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a GPU machine, or --device cpu --smoke", file=sys.stderr)
        return 2
    if not args.idx.is_dir():
        print(f"gpu-check: --idx {args.idx} is not a folder of Fashion-MNIST IDX files (see README)", file=sys.stderr)
        return 2
    if args.pylib:
        sys.path.insert(0, str(args.pylib.resolve()))
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    pythonpath = [str(ROOT / "src"), *([str(args.pylib.resolve())] if args.pylib else [])]
    from ganforge.weights import WEIGHTS_ENV, inception_weights_path

    weights = os.environ.get(WEIGHTS_ENV) or str(inception_weights_path())  # before the cache moves
    env = {
        **os.environ,
        WEIGHTS_ENV: weights,
        "GANFORGE_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "GANFORGE_HOME": str(work / "home"),
        "GANFORGE_PROGRESS": "0",
        **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}),
    }
    for key in ("GANFORGE_HOME", "GANFORGE_CACHE", WEIGHTS_ENV):
        os.environ[key] = env[key]
    report, started = Report(), time.monotonic()
    total = Budget(args.budget)
    results: dict = {"environment": environment(args), "smoke": args.smoke}
    try:
        data = prepare_data(work, args.idx, env, "tiny" if args.smoke else "full", total, report)
    except RuntimeError as e:
        results["error"] = str(e)
        data = None
    runs: dict = {}
    for part in ("presets", "bench", "fid"):
        if data is None or part not in parts:
            continue
        share = total.left() * PART_SHARES[part] / sum(PART_SHARES[q] for q in parts if q in PART_SHARES)
        budget = Budget(share if part != "fid" else total.left())
        try:
            if part == "presets":
                runs = results["presets"] = check_presets(args, work, data, env, budget, report)
            elif part == "bench":
                results["bench"] = check_bench(args, work, data, budget, report)
            else:
                results["fid"] = check_fid(args, work, data, runs, env, budget, report)
        except Exception as e:  # recorded; the other parts still run
            report.add(part, "part", "fail", f"{type(e).__name__}: {str(e)[:160]}")
    if args.quality and data is not None:
        results["quality"] = check_quality(args, work, data, env, report, results.get("bench", {}))
    results["rows"] = report.rows
    results["seconds"] = round(time.monotonic() - started, 1)
    results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(args.out, json.dumps(results, indent=2, default=str) + "\n")
    print(report.table())
    print(f"gpu-check: {results['seconds']:.0f} s (budget {args.budget:.0f} s); report: {args.out}")
    return 1 if any(r["status"] in ("fail", "cut") for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
