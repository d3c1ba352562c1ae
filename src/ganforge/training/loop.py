"""The one training loop: every family runs through it, its differences held by a recipe (``recipes``).

Per step the loop reseeds the global torch RNG from (seed, step, rank) (gradient-penalty ε, DiffAugment,
phase shuffle), runs the recipe's step, updates the EMA copies, and then — at the log, sample, checkpoint
and stop points — checks the losses are finite, logs (rank 0), writes samples and snapshots, and saves the
checkpoint. Every random draw is a function of (seed, step) (``batches``), so a resumed run replays the
steps of an uninterrupted one exactly.

No MLflow or KFP here: metrics leave through the ``on_metrics`` callback (rank 0 only).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT_NAME, CONFIG_NAME, epoch_number, read_checkpoint
from ..config import PipelineConfig
from ..fileio import atomic_write_text
from ..stop import StopFlag, Stopped
from .batches import step_seed
from .checkpoints import check_resume_data, note_thread_change, restore_state, save_state
from .dist import DistInfo, barrier, init_distributed, mean_over_ranks
from .errors import NonFiniteLossError
from .recipes import recipe_for
from .state import StepContext, TrainResult, update_ema

MetricsFn = Callable[[int, dict], None]
SamplesFn = Callable[[int, Path], None]


def train(cfg: PipelineConfig, data, out_dir: str | os.PathLike, **kwargs) -> TrainResult:
    """Train cfg's family on its prepared data (``run``'s arguments and contract).

    SIGTERM and SIGINT stop it gracefully (``ganforge.stop``): the ranks agree on a step, rank 0 writes
    the checkpoint at that step (and calls ``on_checkpoint``) and every rank raises ``stop.Stopped``."""
    with StopFlag() as flag:
        return run(cfg, data, out_dir, stop_flag=flag, **kwargs)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    from ..progress import min_interval, progress_enabled

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not progress_enabled(),
        desc="train",
        mininterval=min_interval(),
    )


def _set_determinism(cfg: PipelineConfig, device: torch.device) -> None:
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def run(
    cfg: PipelineConfig,
    data,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    on_metrics: MetricsFn | None = None,
    on_samples: SamplesFn | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    dist_info: DistInfo | None = None,
    allow_config_change: bool = False,
    allow_data_change: bool = False,
    stop_flag: StopFlag | None = None,
) -> TrainResult:
    """Train cfg's family on ``data`` (a prepared dataset directory; for cyclegan the pair of domain
    directories), writing checkpoint.pt, config.json and samples/ to out_dir.

    ``on_checkpoint(step, path)`` runs on rank 0 right after each checkpoint is written (e.g. to
    copy it to S3, so a replacement pod can resume from it).

    ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists. A config that differs from
    the checkpoint's in a field outside RESUME_SAFE_FIELDS is refused (CheckpointError naming the
    fields) unless ``allow_config_change``; then the new values apply from the resumed step,
    learning rates and betas included. A checkpoint trained on other data (its recorded dataset sha256
    differs from the data's) is refused likewise unless ``allow_data_change``.
    """
    dist_info = dist_info or init_distributed()
    tc = cfg.train
    _set_determinism(cfg, dist_info.device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    ctx = StepContext(cfg, dist_info)
    recipe = recipe_for(cfg, ctx)
    td = recipe.load_data(data)
    n_steps, per_epoch = td.n_steps, td.steps_per_epoch

    state = recipe.build()
    seconds_before = 0.0
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_resume_data(ckpt, ckpt_path, td.manifest, td.source, allow_data_change)
        recipe.check_checkpoint(ckpt, ckpt_path)
        restore_state(ckpt, ckpt_path, cfg, state, ctx, allow_config_change)
        recipe.restore_extra(state, ckpt)
        seconds_before = float(ckpt.get("train_seconds", 0.0))
        if dist_info.is_main:
            note_thread_change(ckpt, ckpt_path)
    elif dist_info.is_main and ckpt_path.exists():
        print(
            f"note: {ckpt_path} exists and --resume was not given; training from scratch and overwriting it",
            file=sys.stderr,
        )
    if tc.compile:
        state.compile(key for key in state.modules if key not in {e for e, _ in state.ema})
    if dist_info.is_main:  # creates out_dir; an unwritable one is a StorageError naming it, before any step
        atomic_write_text(out_dir / CONFIG_NAME, cfg.to_json())
        for name, text in td.run_files.items():
            atomic_write_text(out_dir / name, text)
    step = state.step
    samples: list[Path] = []
    bar = _progress(n_steps, step, dist_info.is_main)
    t0, start_step, last = time.perf_counter(), step, {}
    stop_signal = 0
    first_bad = torch.zeros((), dtype=torch.long, device=dist_info.device)
    state.set_train_mode()
    while step < n_steps:
        torch.manual_seed(step_seed(tc.seed, 4, step, dist_info.rank))
        m = recipe.step(state, td, step)
        for ema_key, key in state.ema:
            update_ema(state[ema_key], state[key], tc.ema_decay, step)
        step += 1
        state.step = step
        # The first step with a non-finite loss, kept on the device: reading it is a host sync, done only before
        # anything is logged or written (on a GPU a sync per step stalls the queue of kernels).
        finite = torch.stack([torch.isfinite(v).all() for v in m.values()]).all()
        first_bad = torch.where(finite | (first_bad > 0), first_bad, step)
        epoch_done = step % per_epoch == 0 or step == n_steps
        log_now = step % tc.log_every == 0 or step == n_steps
        checkpoint_due = step % tc.checkpoint_every == 0 or step == n_steps
        stop_signal = stop_flag.agreed(dist_info.world_size, dist_info.device) if stop_flag else 0
        if (log_now or epoch_done or checkpoint_due or stop_signal) and int(first_bad):
            bad = ", ".join(k for k, v in m.items() if not torch.isfinite(v)) or "loss"
            raise NonFiniteLossError(
                f"non-finite {bad} at step {int(first_bad)}; training stopped. The last good checkpoint is kept at "
                f"{ckpt_path if ckpt_path.exists() else '(none yet)'}. Lower the learning rates, turn train.amp off, "
                "or use a more stable loss (wgan-gp)"
            )
        if log_now:
            m = mean_over_ranks(m, dist_info.world_size)
        if dist_info.is_main:
            if log_now:
                last = {k: float(v) for k, v in m.items()}
                last["img_per_s"] = (step - start_step) * td.images_per_step / (time.perf_counter() - t0)
                last["epoch"] = step / per_epoch
                if on_metrics:
                    on_metrics(step, last)
                _show(bar, recipe.summary_keys, last, step, n_steps)
            if bar is not None:
                bar.update(1)
            if epoch_done:
                epoch_no = epoch_number(step, per_epoch)
                png = recipe.write_samples(state, td, out_dir, f"epoch_{epoch_no:03d}")
                samples.append(png)
                if on_samples:
                    on_samples(step, png)
                if tc.snapshot_every and (epoch_no % tc.snapshot_every == 0 or step == n_steps):
                    recipe.snapshot(state, out_dir, step, epoch_no)
        if dist_info.is_main and (checkpoint_due or stop_signal):  # a stop saves this step, as a periodic one
            save_state(
                ckpt_path,
                state,
                ctx,
                step=step,
                epoch=epoch_number(step, per_epoch),
                cfg=cfg,
                train_seconds=seconds_before + time.perf_counter() - t0,
                data_sha256=td.manifest.get("sha256"),
                extra=recipe.checkpoint_extra(state),
            )
            if on_checkpoint:
                on_checkpoint(step, ckpt_path)
        if stop_signal:
            break
    if bar is not None:
        bar.close()
    if dist_info.world_size > 1:
        barrier(dist_info.world_size)
        # One line per rank (the step lines are rank 0's): a run can show that every rank trained. One write
        # of the whole line: print() writes text and newline apart, and the ranks share one stderr pipe.
        sys.stderr.write(f"rank {dist_info.rank} of {dist_info.world_size}: trained steps {start_step + 1}-{step}\n")
        sys.stderr.flush()
    if stop_signal and step < n_steps:  # after the barrier: rank 0's checkpoint is written when any rank leaves
        raise Stopped(stop_signal, step=step, checkpoint=ckpt_path)
    seconds = time.perf_counter() - t0
    done = step - start_step
    return TrainResult(
        step=step,
        epoch=epoch_number(step, per_epoch),
        seconds=seconds,
        img_per_s=done * td.images_per_step / seconds if seconds > 0 and done else 0.0,
        checkpoint=ckpt_path,
        samples=samples,
        last_metrics=last,
        total_seconds=seconds_before + seconds,
        models=dict(state.modules),
    )


def _show(bar, keys: tuple[str, ...], last: dict, step: int, n_steps: int) -> None:
    """The progress bar's losses, or (no bar shown) one line on stderr."""
    shown = [k for k in keys if k in last]
    if bar is not None:
        bar.set_postfix({k: f"{last[k]:.3f}" for k in shown})
    if bar is None or bar.disable:
        losses = " ".join(f"{k} {last[k]:.4f}" for k in shown)
        print(
            f"step {step}/{n_steps} epoch {last['epoch']:.2f} {losses} {last['img_per_s']:.1f} img/s",
            file=sys.stderr,
            flush=True,
        )
