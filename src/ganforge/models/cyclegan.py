"""CycleGAN networks (Zhu et al. 2017), sized for 28/32/64 px. Imports only torch.

Generator: Johnson et al.'s ResNet translator — a 7×7 stem, two stride-2 convolutions down, ``n_blocks``
residual blocks, two transposed convolutions up, a 7×7 output conv and tanh; instance norm, reflection
padding. At 28 px the bottleneck is 7×7, at 64 px 16×16.

Discriminator: the PatchGAN — 4×4 convolutions, stride 2 then stride 1, one score per overlapping patch.
The original 70×70 PatchGAN downsamples three times for 256 px images; at 28/32 px it keeps two stride-2
layers (a 34×34 receptive field over a 28 px image: the patches overlap most of it) and at 64 px three
(the original 70×70 field). Its output is (B, 1, h, w): the least-squares loss averages over patches.

A run's networks (``CycleModels``: two generators, their EMA copies, two discriminators) and the pools of past
fakes each discriminator also sees (``ImagePool``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image (B, C, H, W) in [-1, 1] → translated image of the same shape; H and W divisible by 4."""

    def __init__(self, channels: int, ngf: int, n_blocks: int):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # down: ngf → 2ngf → 4ngf
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), _norm(ngf * mult * 2)]
            layers.append(nn.ReLU(True))
        layers += [ResidualBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):  # up: 4ngf → 2ngf → ngf
            layers.append(nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1))
            layers += [_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """Image → (B, 1, h, w) patch scores (no sigmoid: least squares)."""

    def __init__(self, channels: int, ndf: int, resolution: int):
        super().__init__()
        n_down = 3 if resolution >= 64 else 2
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, stride=2, padding=1), _norm(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, width * 2, 4, stride=1, padding=1), _norm(width * 2), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(width * 2, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_cyclegan(model_cfg, data_cfg) -> tuple[nn.Module, nn.Module]:
    """One (G, D) pair; a CycleGAN run builds two (A→B with D_B, B→A with D_A)."""
    G = ResnetGenerator(data_cfg.channels, model_cfg.ngf, model_cfg.n_blocks)
    D = PatchDiscriminator(data_cfg.channels, model_cfg.ndf, data_cfg.resolution)
    return G, D


class CycleModels(nn.Module):
    """Both directions' generators (and EMA copies) and both domains' discriminators, one state."""

    def __init__(self, model_cfg, data_cfg):
        super().__init__()
        self.G_ab, self.D_b = build_cyclegan(model_cfg, data_cfg)  # A→B, judged by D_B
        self.G_ba, self.D_a = build_cyclegan(model_cfg, data_cfg)
        self.G_ab_ema = copy.deepcopy(self.G_ab).eval().requires_grad_(False)
        self.G_ba_ema = copy.deepcopy(self.G_ba).eval().requires_grad_(False)


class ImagePool:
    """The last ``size`` fakes a discriminator saw (Shrivastava et al. 2017): once full, each new fake is
    returned as is or, with probability ½, swapped for a random stored one. Choices come from ``gen``."""

    def __init__(self, size: int, images: torch.Tensor | None = None):
        self.size = size
        self.images = [] if images is None else list(images.clone())

    def query(self, fakes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=gen) < 0.5:
                j = int(torch.randint(self.size, (), generator=gen))
                out.append(self.images[j])
                self.images[j] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self, shape: tuple) -> torch.Tensor:
        return torch.stack(self.images).cpu() if self.images else torch.zeros((0, *shape))
