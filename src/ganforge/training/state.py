"""The training state (one object: networks, EMA pairs, optimisers, what a recipe keeps besides) and the
per-run step context (autocast, memory format, gradient scalers, ranks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..augment import diff_augment
from ..config import PipelineConfig
from .dist import DistInfo


class StepContext:
    """Per-run settings the steps need: autocast, memory format, grad scalers, this rank."""

    def __init__(self, cfg: PipelineConfig, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        dev = dist_info.device
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
        self.device_type = dev.type
        self.scaler_d = torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16")
        self.scaler_g = torch.amp.GradScaler(dev.type, enabled=cfg.train.amp == "fp16")
        self.channels_last = cfg.train.channels_last and cfg.data.kind == "image"

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda" and x.device.type == "cpu":
            # from pageable memory a copy first waits for the device's queue; from pinned memory it is queued
            x = x.pin_memory()
        x = x.to(self.dist.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.train.diffaugment) if self.cfg.train.diffaugment else x

    def on_device(self, kwargs: dict) -> dict:
        """``kwargs`` with its tensors prepared (``prepare``)."""
        return {k: self.prepare(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@dataclass
class TrainState:
    """Everything a step changes and a checkpoint keeps.

    ``modules``: checkpoint key → network, in the checkpoint's order (EMA copies included); ``ema``: (EMA key,
    trained key) pairs the loop updates after every step; ``optimizers``: checkpoint key ("opt_G", "opt_D")
    → optimiser; ``compiled``: key → the module the steps call (``torch.compile``'d with ``train.compile``,
    else the module itself); ``extra``: what a recipe keeps besides (image pools, the last R1 value)."""

    modules: dict[str, nn.Module]
    ema: tuple[tuple[str, str], ...]
    optimizers: dict[str, torch.optim.Optimizer]
    compiled: dict[str, nn.Module] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    step: int = 0

    def __getitem__(self, key: str) -> nn.Module:
        return self.modules[key]

    def trained(self, key: str) -> nn.Module:
        """The module the steps call for ``key``."""
        return self.compiled.get(key, self.modules[key])

    def compile(self, keys) -> None:
        self.compiled = {k: torch.compile(self.modules[k]) for k in keys}

    def set_train_mode(self) -> None:
        """Training mode for every trained network (the EMA copies stay in eval mode)."""
        emas = {e for e, _ in self.ema}
        for key, module in self.modules.items():
            if key not in emas:
                module.train()


@torch.no_grad()
def update_ema(g_ema: nn.Module, g: nn.Module, decay: float, step: int) -> None:
    """EMA of G's weights with a warm-up (decay ramps from 0.1) so early samples are not stale; buffers copied."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(g_ema.parameters(), g.parameters()):
        pe.lerp_(p.detach(), 1 - d)
    for be, b in zip(g_ema.buffers(), g.buffers()):
        be.copy_(b)


@dataclass
class TrainResult:
    step: int
    epoch: int
    seconds: float
    """Wall time of this call (since start or resume)."""
    img_per_s: float
    checkpoint: Path
    samples: list[Path]
    last_metrics: dict
    total_seconds: float = 0.0
    """Wall time of the whole run, summed over the calls that resumed it."""
    models: dict = field(default_factory=dict, repr=False)
    """This rank's trained networks by checkpoint key (for in-process callers and tests)."""
