"""pix2pix networks (Isola et al. 2017), sized for 28/32/64 px. Imports only torch.

Generator: a U-Net. The input (the condition: a degraded image, plus a mask channel for inpainting) is
reflection-padded to a multiple of 32 (28 → 32), then 5 levels of 4×4 stride-2 convolutions take it to
1×1 at 32 px (as the paper's 8 levels do at 256 px); the decoder mirrors them with 4×4 stride-2
transposed convolutions, each level concatenating the encoder's feature map of the same size (the skips),
and the output is cropped back to the input size; tanh. Widths ngf, 2ngf, 4ngf, 8ngf, 8ngf; BatchNorm
except on the first and innermost layers; LeakyReLU(0.2) down, ReLU up; dropout 0.5 on the two innermost
decoder levels while training (the paper's noise; the editor runs in eval mode, so editing is
deterministic).

Discriminator: the conditional PatchGAN — it sees the condition and an image concatenated on channels and
returns (B, 1, h, w) logits, one per overlapping patch: two 4×4 stride-2 convolutions, one stride-1 and a
stride-1 output conv (a 34×34 receptive field; at 28 px the patches overlap most of the image), BatchNorm
after the first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LEVELS = 5
"""Stride-2 levels of the U-Net: the padded side must be a multiple of 2**LEVELS."""


def padded_side(resolution: int) -> int:
    """The side the U-Net works at: ``resolution`` rounded up to a multiple of 2**LEVELS (28 → 32)."""
    step = 2**LEVELS
    return -(-resolution // step) * step


class UNetGenerator(nn.Module):
    """Condition (B, in_channels, H, W) in [-1, 1] → image (B, out_channels, H, W) in [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int):
        super().__init__()
        widths = [ngf * min(2**i, 8) for i in range(LEVELS)]  # ngf, 2ngf, 4ngf, 8ngf, 8ngf
        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(prev, w, 4, stride=2, padding=1, bias=i in (0, LEVELS - 1))]
            if 0 < i < LEVELS - 1:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2, True) if i < LEVELS - 1 else nn.ReLU(True))
            self.down.append(nn.Sequential(*layers))
            prev = w
        self.up = nn.ModuleList()
        for i in reversed(range(1, LEVELS)):  # each up level meets the skip of encoder level i - 1
            in_w = widths[i] if i == LEVELS - 1 else widths[i] * 2
            layers = [nn.ConvTranspose2d(in_w, widths[i - 1], 4, stride=2, padding=1, bias=False)]
            layers.append(nn.BatchNorm2d(widths[i - 1]))
            if i >= LEVELS - 2:
                layers.append(nn.Dropout(0.5))
            layers.append(nn.ReLU(True))
            self.up.append(nn.Sequential(*layers))
        self.out = nn.Sequential(nn.ConvTranspose2d(widths[0] * 2, out_channels, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = padded_side(h) - h, padded_side(w) - w
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the innermost level's output is the decoder's input, not a skip
        for layer in self.up:
            x = torch.cat([layer(x), skips.pop()], dim=1)
        x = self.out(x)
        return x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


class ConditionalPatchDiscriminator(nn.Module):
    """(condition (B, in_channels, H, W), image (B, out_channels, H, W)) → (B, 1, h, w) patch logits."""

    def __init__(self, in_channels: int, out_channels: int, ndf: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + out_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, 4, stride=1, padding=1),
        )

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))


def condition_channels(task: str, channels: int) -> int:
    """Channels of the generator's input: the degraded image, plus the hole mask for inpainting."""
    return channels + 1 if task == "inpaint" else channels


def build_pix2pix(model_cfg, data_cfg) -> tuple[nn.Module, nn.Module]:
    """(U-Net G, conditional PatchGAN D) for ``data_cfg.task`` ("sr" or "inpaint")."""
    c_in = condition_channels(data_cfg.task, data_cfg.channels)
    G = UNetGenerator(c_in, data_cfg.channels, model_cfg.ngf)
    D = ConditionalPatchDiscriminator(c_in, data_cfg.channels, model_cfg.ndf)
    return G, D
