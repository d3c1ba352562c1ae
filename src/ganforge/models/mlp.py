"""The vanilla GAN of Goodfellow et al. as in the seed: fully connected G and D."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class MLPGenerator(nn.Module):
    """z → 256 → 512 → 1024 → C·H·W, LeakyReLU(0.2), Tanh."""

    def __init__(self, nz: int, shape: tuple[int, int, int]):
        super().__init__()
        self.nz, self.shape = nz, tuple(shape)
        self.net = nn.Sequential(
            nn.Linear(nz, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 512),
            nn.LeakyReLU(0.2),
            nn.Linear(512, 1024),
            nn.LeakyReLU(0.2),
            nn.Linear(1024, math.prod(self.shape)),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """C·H·W → 1024 → 512 → 256 → 1 logit, LeakyReLU(0.2). No Sigmoid: losses take logits."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(math.prod(shape), 1024),
            nn.LeakyReLU(0.2),
            nn.Linear(1024, 512),
            nn.LeakyReLU(0.2),
            nn.Linear(512, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).view(-1)
