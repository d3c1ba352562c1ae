"""Seeded streams: every random draw of training is a function of (seed, step), not of history.

Real batches come from a per-epoch permutation seeded by (seed, epoch); latent noise for the *global*
batch is drawn from a generator seeded by (seed, step, critic iteration) and each rank takes its slice.
So a run resumed at step s replays steps s+1… exactly as an uninterrupted run would, and a run on N
ranks sees the same global batches and noise as a single-rank run.
"""

from __future__ import annotations

import torch

from ..config import PipelineConfig
from .dist import DistInfo
from .errors import TrainingError


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from (seed, parts…); independent streams for each step/rank/iteration."""
    h = seed & 0xFFFFFFFF
    for p in parts:
        h = (h * 1_000_003 + p + 0x9E3779B9) % (2**63 - 1)
    return h


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, 1, epoch)))


def steps_per_epoch(n_examples: int, cfg: PipelineConfig) -> int:
    per_step = cfg.train.batch_size * cfg.train.n_critic
    steps = n_examples // per_step
    if steps == 0:
        raise TrainingError(
            f"the dataset has {n_examples} examples, fewer than one step needs "
            f"(batch_size {cfg.train.batch_size} × n_critic {cfg.train.n_critic}); "
            "lower train.batch_size or use more data (data.limit)"
        )
    return steps


def capped_steps(per_epoch: int, cfg: PipelineConfig) -> int:
    """The run's length in steps: ``train.epochs`` epochs of ``per_epoch`` steps, at most ``train.max_steps``."""
    total = per_epoch * cfg.train.epochs
    return min(total, cfg.train.max_steps) if cfg.train.max_steps else total


def total_steps(n_examples: int, cfg: PipelineConfig) -> int:
    return capped_steps(steps_per_epoch(n_examples, cfg), cfg)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images → [-1, 1]; int16 audio → [-1, 1). Converted per batch so data stays compact in memory."""
    if batch_u8.dtype == torch.uint8:
        return batch_u8.float().div_(127.5).sub_(1.0)
    if batch_u8.dtype == torch.int16:
        return batch_u8.float().div_(32768.0)
    raise TrainingError(f"unsupported data dtype {batch_u8.dtype}; expected uint8 images or int16 audio")


def rank_slice(x: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of a global batch."""
    local = len(x) // dist_info.world_size
    return x[dist_info.rank * local : (dist_info.rank + 1) * local]


class Batches:
    """Global batch b of epoch e = perm_e[b·B : (b+1)·B]; this rank takes its contiguous slice.

    ``labels`` (class-conditional runs): ``get_labels`` gives the labels of the same examples. ``seed``: the
    permutation's seed (``train.seed`` unless a recipe keeps several independent orders)."""

    def __init__(
        self,
        data: torch.Tensor,
        cfg: PipelineConfig,
        dist_info: DistInfo,
        labels: torch.Tensor | None = None,
        seed: int | None = None,
    ):
        self.data, self.cfg, self.dist, self.labels = data, cfg, dist_info, labels
        self.seed = cfg.train.seed if seed is None else seed
        self.local = cfg.train.batch_size // dist_info.world_size
        self._epoch, self._perm = -1, None

    def _indices(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(len(self.data), self.seed, epoch)
        start = index_in_epoch * self.cfg.train.batch_size + self.dist.rank * self.local
        return self._perm[start : start + self.local]

    def get(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        return self.data[self._indices(epoch, index_in_epoch)]

    def get_labels(self, epoch: int, index_in_epoch: int) -> torch.Tensor:
        return self.labels[self._indices(epoch, index_in_epoch)]


def global_noise(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo) -> torch.Tensor:
    """This rank's slice of the global batch's latent noise for (step, critic iteration k)."""
    g = torch.Generator().manual_seed(step_seed(cfg.train.seed, 2, step, k))
    return rank_slice(torch.randn(cfg.train.batch_size, cfg.model.nz, generator=g), dist_info)


def global_labels(cfg: PipelineConfig, step: int, k: int, dist_info: DistInfo) -> torch.Tensor:
    """Class-conditional runs: this rank's slice of the global batch's fake labels for (step, iteration k),
    uniform over the classes and, like the noise, a function of (seed, step, k) only."""
    g = torch.Generator().manual_seed(step_seed(cfg.train.seed, 5, step, k))
    return rank_slice(torch.randint(cfg.model.num_classes, (cfg.train.batch_size,), generator=g), dist_info)
