"""gpu_check's presets, fid and quality parts: train, evaluate and generate through the core CLI."""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from gpu_check_bench import sync
from gpu_check_run import Budget, Report, cli, last_json, one_line

IMAGE_PRESETS = ("gan", "dcgan", "wgan-gp", "sngan", "cdcgan", "stylegan", "cyclegan")


QUALITY_SECONDS = 420


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
