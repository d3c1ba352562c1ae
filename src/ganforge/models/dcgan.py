"""DCGAN (Radford et al. 2015) for 28, 32 and 64 px images, 1 or 3 channels.

The generator starts from a 4×4 map (7×7 for 28 px) and doubles the side with
ConvTranspose(4, 2, 1) + BatchNorm + ReLU; the discriminator mirrors it with strided
Conv(4, 2, 1) + norm + LeakyReLU(0.2) and ends in one logit. Weights are drawn from
N(0, 0.02) as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_START = {28: 7, 32: 4, 64: 4}  # side of the first (last, in D) feature map
_LEVELS = {28: 2, 32: 3, 64: 4}  # stride-2 up/down-sampling layers between it and the image


def _levels(resolution: int) -> int:
    if resolution not in _LEVELS:
        raise ValueError(f"DCGAN supports resolutions {sorted(_LEVELS)}, not {resolution}")
    return _LEVELS[resolution]


def dcgan_init_(module: nn.Module) -> None:
    """N(0, 0.02) conv weights; BatchNorm γ ~ N(1, 0.02), β = 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, nz: int, ngf: int, channels: int, resolution: int):
        super().__init__()
        self.nz = nz
        n_up = _levels(resolution)
        start = _START[resolution]
        widths = [ngf * 2**i for i in reversed(range(n_up))]  # e.g. 64 px: 8ngf, 4ngf, 2ngf, ngf
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, widths[0], start, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


def _d_norm(kind: str, c: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(c)]
    if kind == "layer":  # LayerNorm over (C, H, W): per-sample, so the gradient penalty stays valid
        return [nn.GroupNorm(1, c)]
    return []


class DCGANDiscriminator(nn.Module):
    """norm: ``batch`` (DCGAN), ``layer``/``none`` (WGAN-GP critic), ``spectral`` (SNGAN)."""

    def __init__(self, ndf: int, channels: int, resolution: int, norm: str = "batch"):
        super().__init__()
        n_down = _levels(resolution)
        widths = [ndf * 2**i for i in range(n_down)]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "batch"),
                *_d_norm(norm, c_out),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(widths[-1], 1, _START[resolution], 1, 0)]
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)
        if norm == "spectral":  # after init: the parametrisation wraps the initialised weights
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
