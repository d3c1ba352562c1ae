"""Training entry points, kept at their old import path: the loop and its parts live in ``ganforge.training``.

``train(cfg, data_dir, out_dir, …)`` trains any family (``ganforge.training.loop``); the latent-noise
families' steps are ``d_step`` and ``g_step`` (``ganforge.training.recipes.gan``).
"""

from __future__ import annotations

from .checkpoint import read_checkpoint
from .training.batches import Batches as _Batches
from .training.batches import (
    epoch_permutation,
    global_labels,
    global_noise,
    steps_per_epoch,
    to_float,
    total_steps,
)
from .training.batches import step_seed as _step_seed
from .training.checkpoints import RESUME_SAFE_FIELDS, check_resume_data, resume_config_changes
from .training.checkpoints import note_thread_change as _note_thread_change
from .training.checkpoints import rng_state as _rng_state
from .training.checkpoints import set_rng_state as _set_rng_state
from .training.dist import DistInfo, average_gradients, init_distributed, mean_over_ranks
from .training.errors import NonFiniteLossError, TrainingError
from .training.loop import MetricsFn, SamplesFn, train
from .training.loop import run as _train
from .training.recipes.gan import build_training_state, conditional_labels, d_step, g_step, r1_due, style_mixing
from .training.sampling import (
    CLASSES_FILE,
    N_FIXED_SAMPLES,
    classes_json,
    fixed_labels,
    fixed_noise,
    generate,
    read_class_names,
    write_samples,
)
from .training.state import StepContext as _Context
from .training.state import TrainResult, update_ema


def _on_device(kwargs: dict, ctx: _Context) -> dict:
    return ctx.on_device(kwargs)


__all__ = [
    "CLASSES_FILE",
    "N_FIXED_SAMPLES",
    "RESUME_SAFE_FIELDS",
    "DistInfo",
    "MetricsFn",
    "NonFiniteLossError",
    "SamplesFn",
    "TrainResult",
    "TrainingError",
    "_Batches",
    "_Context",
    "_note_thread_change",
    "_on_device",
    "_rng_state",
    "_set_rng_state",
    "_step_seed",
    "_train",
    "average_gradients",
    "build_training_state",
    "check_resume_data",
    "classes_json",
    "conditional_labels",
    "d_step",
    "epoch_permutation",
    "fixed_labels",
    "fixed_noise",
    "g_step",
    "generate",
    "global_labels",
    "global_noise",
    "init_distributed",
    "mean_over_ranks",
    "r1_due",
    "read_checkpoint",
    "read_class_names",
    "resume_config_changes",
    "steps_per_epoch",
    "style_mixing",
    "to_float",
    "total_steps",
    "train",
    "update_ema",
    "write_samples",
]
