"""Process groups: joining the group torchrun describes, averaging gradients and metrics over ranks.

Ranks average gradients with ``torch.distributed.all_reduce`` after each backward — the arithmetic
DistributedDataParallel performs — without the DDP wrapper, because the WGAN-GP penalty needs a double
backward through D, which DDP's reducer does not support, and D runs three times per step (real, fake,
interpolates). BatchNorm statistics stay per rank, as with DDP's default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun (or the Training Operator) describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if world > 1 and not cuda:
        # Share the free cores between the ranks on this node instead of oversubscribing them (once per
        # process: a no-op when the CLI's entry point already decided; OMP_NUM_THREADS from the launcher wins).
        from .. import threads

        threads.configure(processes=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def average_gradients(module: nn.Module, world_size: int) -> None:
    """All-reduce and average gradients in one flat buffer (one collective per step, like DDP's buckets)."""
    if world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(metrics: dict, world_size: int) -> dict:
    """Average scalar metrics over ranks (every rank must call it), so logged losses are global-batch means."""
    if world_size == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.stack([metrics[k].detach().float() for k in keys])  # on the device: NCCL needs CUDA tensors
    dist.all_reduce(values)
    return dict(zip(keys, values / world_size))


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
