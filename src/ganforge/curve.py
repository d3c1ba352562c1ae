"""The FID curve over a training run: FID-n of each epoch snapshot's EMA generator.

Training keeps the EMA generator every ``train.snapshot_every`` epochs
(``snapshots/epoch_NNN.pt``). Each point of the curve samples ``eval.curve_samples`` images
with the evaluation's fixed latent seed and compares them with the same real reference as the
final evaluation (``eval.n_samples`` real images, whose features are cached), so points differ
only in the generator. FID is biased upwards at small n: compare curve points with each other,
and the final FID-10k with published numbers.

The curve is a CSV beside the run (rewritten atomically after each point), so an interrupted
evaluation resumes at the next missing epoch, and ``follow`` can trail a run still training
on another core. The point for the run's last epoch can be taken from the final evaluation's
samples (the first ``curve_samples`` of its draw are the curve's draw), at no extra cost.
``evaluate_run`` is a run's whole evaluation: its final model (``evaluate.evaluate_checkpoint``)
and this curve; ``evaluate_translation_run`` the same for a cyclegan run (``translate.evaluate_translation``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, list_snapshots, read_checkpoint
from .config import PipelineConfig
from .data import load_dataset
from .errors import GanforgeError
from .evaluate import evaluate_checkpoint
from .fileio import atomic_file, atomic_write_text
from .paths import cache_dir as default_cache_dir
from .training.batches import steps_per_epoch, total_steps

CURVE_CSV = "fid_curve.csv"
CURVE_PNG = "fid_curve.png"
FIELDS = ("epoch", "step", "n", "n_real", "fid", "kid_mean", "kid_std", "seconds")


class CurveError(GanforgeError, ValueError):
    """The run directory cannot give a curve; the message says why and what to do."""


def read_curve(path: str | os.PathLike) -> list[dict]:
    """Rows of a curve CSV (numbers parsed), by epoch; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise CurveError(
                f"{path} is not a ganforge FID curve (columns {reader.fieldnames}, expected {list(FIELDS)});"
                " move it away or delete it to recompute the curve"
            )
        rows = [
            {k: (int(v) if k in ("epoch", "step", "n", "n_real") else float(v)) for k, v in r.items()} for r in reader
        ]
    return sorted(rows, key=lambda r: r["epoch"])


def write_curve(path: str | os.PathLike, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow({k: row[k] for k in FIELDS})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _final_epoch(run_dir: Path, data_dir: str | os.PathLike, cfg: PipelineConfig) -> int:
    """The epoch the run ends at (its last snapshot), from its config and the dataset's size."""
    n = len(load_dataset(data_dir).images)
    return math.ceil(total_steps(n, cfg) / steps_per_epoch(n, cfg))


def curve_point(
    snapshot: str | os.PathLike,
    reference_dir: str | os.PathLike,
    n: int,
    n_real: int,
    cache: str | os.PathLike,
    workers: int | None = None,
    reference_b: str | os.PathLike | None = None,
) -> dict:
    """FID/KID of one snapshot's generator: n generated images vs n_real reference images. A cyclegan
    snapshot is scored as its final evaluation is: both directions on the held-out domains ``reference_dir``
    (A) and ``reference_b`` (B), their mean (``translate.translation_curve_point``)."""
    started = time.perf_counter()
    ckpt = read_checkpoint(snapshot)
    if ckpt["config"]["model"]["arch"] == "cyclegan":
        if reference_b is None:
            raise CurveError(
                f"{snapshot} is a cyclegan snapshot, scored on both held-out domains: pass --data A_TEST_DIR "
                "--data-b B_TEST_DIR (each from `ganforge prep --preset cyclegan --domain a|b --split test`)"
            )
        from .translate import translation_curve_point

        m = translation_curve_point(ckpt, snapshot, reference_dir, reference_b, n, n_real, cache, workers)
    else:
        m = evaluate_checkpoint(snapshot, reference_dir, n=n, n_real=n_real, cache=cache, ckpt=ckpt, workers=workers)
    return {
        "epoch": int(ckpt["epoch"]),
        "step": int(ckpt["step"]),
        "n": n,
        "n_real": m["n_real"],
        "fid": m["fid"],
        "kid_mean": m["kid_mean"],
        "kid_std": m["kid_std"],
        "seconds": time.perf_counter() - started,
    }


def fid_curve(
    run_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    *,
    n: int | None = None,
    n_real: int | None = None,
    cache: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    known: list[dict] | None = None,
    follow: bool = False,
    train_data_dir: str | os.PathLike | None = None,
    poll_s: float = 30.0,
    max_epoch: int | None = None,
    on_point: Callable[[dict], None] | None = None,
    workers: int | None = None,
    reference_b: str | os.PathLike | None = None,
) -> list[dict]:
    """Evaluate every snapshot of run_dir not yet in the curve CSV; return all rows by epoch.

    ``known``: points already measured elsewhere (the final evaluation's) to add without
    recomputing. ``follow``: keep polling for new snapshots until the run's last epoch has
    one (needs ``train_data_dir`` to know when that is), or until ``max_epoch`` when given
    (snapshots after it are left for a later call, e.g. the final evaluation's). ``reference_b``: a cyclegan
    run's held-out domain B (``reference_dir`` is A's); a cyclegan run follows only up to ``max_epoch``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise CurveError(
            f"{run_dir} has no config.json: point --run at a training output directory (the --out of `ganforge train`)"
        )
    cfg = PipelineConfig.from_json(config_path.read_text())
    n = n or cfg.eval.curve_samples
    n_real = n_real or cfg.eval.n_samples
    cache = Path(cache) if cache else default_cache_dir()
    out = Path(out) if out else run_dir / CURVE_CSV
    rows = {r["epoch"]: r for r in read_curve(out) if r["n"] == n and r["n_real"] == n_real}
    for r in known or []:
        if r["n"] == n and r["n_real"] == n_real:
            rows[r["epoch"]] = r
    if not follow and not list_snapshots(run_dir) and not rows:
        raise CurveError(
            f"{run_dir} has no snapshots/: train with train.snapshot_every > 0 (e.g. --set "
            "train.snapshot_every=4) to get an FID curve"
        )
    if follow and train_data_dir is None and max_epoch is None:
        raise CurveError("follow needs the training dataset directory (or a max epoch) to know when to stop")
    if follow and max_epoch is None and cfg.model.arch == "cyclegan":
        raise CurveError("a cyclegan run trains on two domains: follow it with --max-epoch (its last epoch)")
    last_epoch = _final_epoch(run_dir, train_data_dir, cfg) if follow and train_data_dir is not None else None
    if max_epoch is not None:
        last_epoch = min(last_epoch, max_epoch) if last_epoch is not None else max_epoch
    while True:
        for epoch, path in list_snapshots(run_dir):
            if epoch in rows or (max_epoch is not None and epoch > max_epoch):
                continue
            rows[epoch] = curve_point(path, reference_dir, n, n_real, cache, workers, reference_b)
            write_curve(out, list(rows.values()))
            if on_point:
                on_point(rows[epoch])
        if not follow or last_epoch is None or any(e >= last_epoch for e in rows):
            break
        time.sleep(poll_s)
    if rows:
        write_curve(out, list(rows.values()))
    return sorted(rows.values(), key=lambda r: r["epoch"])


def evaluate_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n: int | None = None,
    cache: str | os.PathLike | None = None,
    curve: bool = True,
    train_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[dict, list[dict]]:
    """The final evaluation of a training run, plus its FID curve when the run kept snapshots.

    Writes ``metrics.json`` and, with snapshots, ``fid_curve.csv`` and ``fid_curve.png`` to
    out_dir. The curve's point for the last snapshot, when it is the final checkpoint, comes from
    the first ``eval.curve_samples`` of the final evaluation's samples (the same latent draw).
    ``curve=False`` scores no earlier snapshot (each costs an FID-``curve_samples``): the curve
    keeps the points already in its CSV plus the free one from the final evaluation, and a later
    ``ganforge curve --run`` fills in the rest. ``workers``: CPU processes for the Inception features
    (default: GANFORGE_EVAL_WORKERS). Returns (metrics, curve rows).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = read_checkpoint(ckpt_path)
    cfg = PipelineConfig.from_dict(ckpt["config"])
    n = n or cfg.eval.n_samples
    snapshots = list_snapshots(run_dir) if cfg.data.kind == "image" else []
    curve_n = cfg.eval.curve_samples
    samples: dict = {}
    metrics = evaluate_checkpoint(
        ckpt_path,
        data_dir,
        n=n,
        cache=cache,
        prefix_n=curve_n if snapshots and curve_n < n else None,
        ckpt=ckpt,
        train_dir=train_dir,
        workers=workers,
        samples_out=samples,
    )
    prefix = metrics.pop("prefix", None)
    metrics["step"] = int(ckpt["step"])
    rows: list[dict] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.kind == "audio":  # spectrogram grids and WAVs of the scored samples (ganforge.eval_audio)
        from .eval_audio import write_eval_audio

        write_eval_audio(samples["fake"].numpy(), data_dir, out_dir, cfg.data.sample_rate)
    if snapshots:
        final = {"n": metrics["n"], "n_real": metrics["n_real"], "fid": metrics["fid"], "step": metrics["step"]}
        rows = run_curve(run_dir, cfg, snapshots, data_dir, out_dir, cache, n, final, prefix, curve, workers)
        metrics["curve_points"] = len(rows)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return metrics, rows


def evaluate_translation_run(
    path: str | os.PathLike,
    test_a: str | os.PathLike,
    test_b: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    n: int | None = None,
    curve: bool = True,
) -> dict:
    """``evaluate_translation`` of a cyclegan run directory (or its checkpoint.pt) on held-out domains prepared
    by ``ganforge prep --domain a|b --split test``; ``n`` held-out images a direction (default eval.n_samples).
    Adds the checkpoint's ``step``; writes metrics.json and the grid to ``out_dir``. A run that kept snapshots
    (``train.snapshot_every``) also gets its FID curve, ``fid_curve.{csv,png}`` in ``out_dir``
    (``run_curve``; ``curve=False`` scores no earlier snapshot) and ``curve_points`` in the metrics."""
    import dataclasses

    from .checkpoint import checkpoint_file
    from .cyclegan import translators_from
    from .translate import evaluate_translation

    path = checkpoint_file(path)
    ckpt = read_checkpoint(path)
    G_ab, G_ba, cfg = translators_from(ckpt, path)
    eval_cfg = dataclasses.replace(cfg.eval, n_samples=n) if n else cfg.eval
    snapshots = list_snapshots(path.parent) if path.name == CHECKPOINT_NAME else []
    curve_n = cfg.eval.curve_samples
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metrics = evaluate_translation(
        G_ab,
        G_ba,
        cfg,
        test_a,
        test_b,
        out_dir,
        cache_dir,
        eval_cfg,
        prefix_n=curve_n if snapshots and curve_n < eval_cfg.n_samples else None,
    )
    prefix = metrics.pop("prefix", None)
    metrics["step"] = int(ckpt["step"])
    if snapshots:
        final = {"n": metrics["n_a"], "n_real": metrics["n_real"], "fid": metrics["fid"], "step": metrics["step"]}
        rows = run_curve(
            path.parent,
            cfg,
            snapshots,
            test_a,
            out_dir,
            cache_dir,
            eval_cfg.n_samples,
            final,
            prefix,
            curve=curve,
            reference_b=test_b,
        )
        metrics["curve_points"] = len(rows)
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_curve(
    run_dir: Path,
    cfg: PipelineConfig,
    snapshots: list[tuple[int, Path]],
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache: str | os.PathLike | None,
    n_real: int,
    final: dict,
    prefix: dict | None,
    curve: bool = True,
    workers: int | None = None,
    reference_b: str | os.PathLike | None = None,
) -> list[dict]:
    """The FID curve part of a run's evaluation: ``fid_curve.{csv,png}`` in out_dir, the rows returned.
    Points compare ``eval.curve_samples`` generated (or translated) images with ``n_real`` real ones.

    ``final``: the final evaluation's ``step``, ``n``, ``n_real`` and ``fid``; ``prefix``: its score of the
    first ``eval.curve_samples`` samples, which is the curve's point for the last snapshot when that
    snapshot is the final checkpoint (the same draw), so that point costs nothing. ``curve=False``: score no
    other snapshot, keep the CSV's points and that one."""
    last_epoch, last_path = snapshots[-1]
    known = []
    if prefix and int(read_checkpoint(last_path)["step"]) == final["step"]:
        known = [
            {
                "epoch": last_epoch,
                "step": final["step"],
                "n": prefix["n"],
                "n_real": final["n_real"],
                "fid": prefix["fid"],
                "kid_mean": prefix["kid_mean"],
                "kid_std": prefix["kid_std"],
                "seconds": 0.0,
            }
        ]
    # max_epoch=0 (snapshots are numbered from epoch 1): keep the known points, score none
    rows = fid_curve(
        run_dir,
        data_dir,
        n=cfg.eval.curve_samples,
        n_real=n_real,
        cache=cache,
        out=Path(out_dir) / CURVE_CSV,
        known=known,
        max_epoch=None if curve else 0,
        workers=workers,
        reference_b=reference_b,
    )
    plot_curve(
        rows,
        Path(out_dir) / CURVE_PNG,
        final={"epoch": last_epoch, "n": final["n"], "fid": final["fid"]},
        title=f"{cfg.name} ({cfg.profile}): FID over training",
    )
    return rows


def plot_curve(rows: list[dict], out_png: str | os.PathLike, final: dict | None = None, title: str = "") -> Path:
    """FID-n (left axis) and KID (right axis) against epoch; the final FID as a labelled marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if rows:
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, [r["fid"] for r in rows], marker="o", label=f"FID-{rows[0]['n']} (vs {rows[0]['n_real']} real)")
        ax2 = ax.twinx()
        ax2.plot(epochs, [r["kid_mean"] for r in rows], marker="s", color="tab:orange", alpha=0.6, label="KID")
        ax2.set_ylabel("KID")
        ax2.legend(loc="upper center", fontsize="small")
    if final:
        ax.scatter(
            [final["epoch"]],
            [final["fid"]],
            marker="*",
            s=150,
            color="tab:red",
            zorder=3,
            label=f"FID-{final['n']} = {final['fid']:.2f}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("FID")
    ax.set_title(title or "FID over training")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)


def print_point(row: dict) -> None:
    print(
        f"epoch {row['epoch']:3d} step {row['step']:6d}  FID-{row['n']} {row['fid']:.3f}  "
        f"KID {row['kid_mean']:.5f} ± {row['kid_std']:.5f}  ({row['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
