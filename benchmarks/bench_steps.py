"""The two sides of the training benchmarks: ganforge's step (``GanforgeStep``) and the
pytorch/examples-style naive loop (``NaiveStep``), their configs and data, and the step variants
(Adam kinds, EMA, oneDNN off) each speed switch is measured with."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ganforge.config import DEFAULT_IDX_DIR, DataConfig, PipelineConfig, build_config
from ganforge.data import DataError, load_dataset, prepare, read_idx_dir
from ganforge.models import build_models
from ganforge.train import (
    DistInfo,
    _Context,
    build_training_state,
    d_step,
    epoch_permutation,
    g_step,
    global_noise,
    to_float,
    update_ema,
)

BENCH_IMAGES = 2048
"""Fashion-MNIST training images held in memory (32 batches of 64: no epoch boundary inside a round)."""


def dcgan64_config() -> PipelineConfig:
    """pytorch/examples' DCGAN setting (64², batch 64, nz 100, ngf = ndf = 64) on 1-channel Fashion-MNIST."""
    return build_config(
        "dcgan",
        "local",
        {
            "data": {"resolution": 64, "limit": BENCH_IMAGES},
            "model": {"ngf": 64, "ndf": 64},
            "train": {"batch_size": 64},
        },
    )


def dcgan32_small_config() -> PipelineConfig:
    """A 32² DCGAN with ngf = ndf = 16, for the compile measurement (compiling the 64² model is slow on 2 cores)."""
    return build_config(
        "dcgan",
        "local",
        {
            "data": {"resolution": 32, "limit": BENCH_IMAGES},
            "model": {"ngf": 16, "ndf": 16},
            "train": {"batch_size": 64},
        },
    )


def prepared_dataset(cfg: DataConfig, work_dir: Path) -> Path:
    """The Fashion-MNIST training split prepared for cfg under work_dir, reused when already there."""
    out = work_dir / f"fashion_{cfg.resolution}px_{cfg.channels}ch_{cfg.limit}"
    expected = [cfg.limit, cfg.channels, cfg.resolution, cfg.resolution]
    try:
        if load_dataset(out).manifest["shape"] == expected:
            return out
    except DataError:
        pass  # not prepared yet (or damaged): prepare it afresh
    prepare(cfg, out, split="train")
    return out


def in_memory_uint8(data_dir: Path) -> torch.Tensor:
    """The prepared uint8 images read into memory once, as ``train`` does."""
    return torch.from_numpy(np.array(load_dataset(data_dir).images))


def pil_source_images(limit: int) -> list:
    """The first ``limit`` 28×28 Fashion-MNIST training images as PIL images (what torchvision's dataset holds)."""
    from PIL import Image

    raw = read_idx_dir(Path(DEFAULT_IDX_DIR), "train", DataConfig(resolution=28, limit=limit))
    return [Image.fromarray(img[0], mode="L") for img in raw.images]


class PILImageDataset(Dataset):
    """torchvision-style: one PIL image converted per ``__getitem__`` (Resize, ToTensor, Normalize)."""

    def __init__(self, images: list, resolution: int):
        from torchvision import transforms

        self.images = images
        self.transform = transforms.Compose(
            [transforms.Resize(resolution), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def endless_pil_batches(images: list, resolution: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled float batches from a DataLoader(num_workers=0) over PILImageDataset, epoch after epoch."""
    loader = DataLoader(
        PILImageDataset(images, resolution),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader


def endless_uint8_batches(data: torch.Tensor, cfg: PipelineConfig) -> Iterator[torch.Tensor]:
    """uint8 batches in ``train``'s order: a seeded permutation per epoch, sliced by batch."""
    b = cfg.train.batch_size
    epoch = 0
    while True:
        perm = epoch_permutation(len(data), cfg.train.seed, epoch)
        for start in range(0, len(data) - b + 1, b):
            yield data[perm[start : start + b]]
        epoch += 1


class GanforgeStep:
    """ganforge's training step (the body of ``train``'s loop) on one rank, fed uint8 or float batches."""

    def __init__(self, cfg: PipelineConfig, batches: Iterator[torch.Tensor]):
        self.cfg, self.batches = cfg, batches
        self.dist = DistInfo()
        self.G, self.D, self.G_ema, self.opt_g, self.opt_d = build_training_state(cfg, self.dist.device)
        self.ctx = _Context(cfg, self.dist)
        self.G_train = torch.compile(self.G) if cfg.train.compile else self.G
        self.D_train = torch.compile(self.D) if cfg.train.compile else self.D
        self.step = 0
        self.update_ema = update_ema
        self.G.train(), self.D.train()

    def real_batch(self) -> torch.Tensor:
        batch = next(self.batches)
        return self.ctx.prepare(to_float(batch) if batch.dtype == torch.uint8 else batch)

    def __call__(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        for k in range(cfg.train.n_critic):
            d_step(
                self.G_train,
                self.D_train,
                self.opt_d,
                self.real_batch(),
                ctx.prepare(global_noise(cfg, self.step, k, self.dist)),
                ctx,
            )
        g_step(
            self.G_train,
            self.D_train,
            self.opt_g,
            ctx.prepare(global_noise(cfg, self.step, cfg.train.n_critic, self.dist)),
            ctx,
        )
        self.update_ema(self.G_ema, self.G, cfg.train.ema_decay, self.step)
        self.step += 1


class NaiveStep:
    """pytorch/examples ``dcgan/main.py``'s step over ganforge's networks: Sigmoid + BCELoss, NCHW, fp32."""

    def __init__(self, cfg: PipelineConfig, batches: Iterator[torch.Tensor]):
        self.batches, self.nz = batches, cfg.model.nz
        torch.manual_seed(cfg.train.seed)
        self.G, self.D = build_models(cfg.model, cfg.data)
        tc = cfg.train
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2))
        self.criterion = nn.BCELoss()

    def __call__(self) -> None:
        real = next(self.batches)
        b = real.shape[0]
        self.D.zero_grad()
        label = torch.full((b,), 1.0)
        self.criterion(torch.sigmoid(self.D(real)), label).backward()
        fake = self.G(torch.randn(b, self.nz, 1, 1))
        label.fill_(0.0)
        self.criterion(torch.sigmoid(self.D(fake.detach())), label).backward()
        self.opt_d.step()
        self.G.zero_grad()
        label.fill_(1.0)
        self.criterion(torch.sigmoid(self.D(fake)), label).backward()
        self.opt_g.step()


@torch.no_grad()
def update_ema_foreach(g_ema: nn.Module, g: nn.Module, decay: float, step: int) -> None:
    """``update_ema`` as two multi-tensor kernels (torch._foreach_lerp_ and _foreach_copy_): a lever measured."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(g_ema.parameters()), [p.detach() for p in g.parameters()], 1 - d)
    torch._foreach_copy_(list(g_ema.buffers()), list(g.buffers()))


def with_adam(step: GanforgeStep, **kind) -> GanforgeStep:
    """The step with both optimisers rebuilt as Adam(**kind) (foreach=True / fused=True), same hyper-parameters."""
    tc = step.cfg.train
    step.opt_g = torch.optim.Adam(step.G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2), **kind)
    step.opt_d = torch.optim.Adam(step.D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2), **kind)
    return step


def with_ema(step: GanforgeStep, fn: Callable) -> GanforgeStep:
    step.update_ema = fn
    return step


def without_onednn(step: Callable[[], None]) -> Callable[[], None]:
    """The step with oneDNN (mkldnn) convolutions switched off: ATen's own CPU kernels instead."""

    def run() -> None:
        with torch.backends.mkldnn.flags(enabled=False):
            step()

    return run
