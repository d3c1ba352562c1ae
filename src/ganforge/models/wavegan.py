"""WaveGAN (Donahue, McAuley & Puckette, ICLR 2019): DCGAN-style 1-D GAN on raw 16384-sample audio.

Parametrisation follows the paper (Table 3, model size d = ``ngf``/``ndf`` = 64) and the reference
TensorFlow code, chrisdonahue/wavegan ``wavegan.py``: kernel 25, stride 4, no BatchNorm, phase
shuffle radius 2 in the critic. Weights are initialised as there: ``tf.layers`` defaults, i.e.
Glorot-uniform kernels and zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL = 25
STRIDE = 4
PAD = 11
"""(KERNEL - STRIDE + 1) // 2: with it a stride-4 conv maps L → L/4, like TF's padding='SAME'."""
BASE_LENGTH = 16
"""Length of the first feature map: 16 · 4⁵ = 16384 samples."""
N_UPSAMPLE = 5


class PhaseShuffle(nn.Module):
    """Shift each example's feature map in time by a random k ∈ [-n, n], filling with reflection.

    The critic otherwise learns to spot generated audio by the phase of the transposed convolutions'
    periodic artefacts (paper §3.3). Identity in eval mode or when n == 0.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 0:
            raise ValueError(f"phase shuffle radius must be >= 0, got {n}")
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.n == 0:
            return x
        shifts = torch.randint(-self.n, self.n + 1, (x.shape[0],), device=x.device)
        return shift_with_reflection(x, shifts, self.n)


def shift_with_reflection(x: torch.Tensor, shifts: torch.Tensor, n: int) -> torch.Tensor:
    """``out[b, :, t] = reflect(x[b])[t - shifts[b]]``: a positive shift moves the signal right.

    Pads by n on both sides with reflection, then takes a per-example window by gather, so the
    whole batch shifts in one op (the reference draws one shift per batch; per example is stronger).
    """
    length = x.shape[-1]
    padded = nn.functional.pad(x, (n, n), mode="reflect")
    start = (n - shifts).view(-1, 1, 1)
    index = start + torch.arange(length, device=x.device).view(1, 1, -1)
    return padded.gather(-1, index.expand(-1, x.shape[1], -1))


def glorot_init_(module: nn.Module) -> None:
    """Glorot-uniform weights, zero biases: the ``tf.layers`` defaults the reference code relies on."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class WaveGANGenerator(nn.Module):
    """z (B, nz) → waveform (B, 1, 16384) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, out_length: int = 16384) -> None:
        super().__init__()
        if out_length != BASE_LENGTH * STRIDE**N_UPSAMPLE:
            raise ValueError(f"WaveGAN generates {BASE_LENGTH * STRIDE**N_UPSAMPLE} samples, not {out_length}")
        self.nz, self.top_channels = nz, 16 * ngf
        self.project = nn.Linear(nz, BASE_LENGTH * self.top_channels)
        widths = [16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf, 1]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose1d(c_in, c_out, KERNEL, STRIDE, padding=PAD, output_padding=1))
            layers.append(nn.Tanh() if i == N_UPSAMPLE - 1 else nn.ReLU())
        self.upsample = nn.Sequential(*layers)
        self.apply(glorot_init_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.top_channels, BASE_LENGTH)
        return self.upsample(torch.relu(x))


def critic_norm(kind: str, channels: int) -> nn.Module:
    """Per-example normalisation only: the WGAN-GP penalty is per sample, BatchNorm would couple them."""
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over (channels, time) with per-channel affine
    raise ValueError(f"WaveGAN critic norm {kind!r} is not supported; use 'none' (the paper) or 'layer'")


class WaveGANDiscriminator(nn.Module):
    """Waveform (B, 1, 16384) → critic logits (B,)."""

    def __init__(self, ndf: int = 64, phase_shuffle: int = 2, norm: str = "none") -> None:
        super().__init__()
        widths = [1, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 16 * ndf]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv1d(c_in, c_out, KERNEL, STRIDE, padding=PAD))
            if i > 0:  # the reference never normalises the first layer
                layers.append(critic_norm(norm, c_out))
            layers.append(nn.LeakyReLU(0.2))
            if i < N_UPSAMPLE - 1:
                layers.append(PhaseShuffle(phase_shuffle))
        self.features = nn.Sequential(*layers)
        self.output = nn.Linear(BASE_LENGTH * widths[-1], 1)
        self.apply(glorot_init_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x).flatten(1)).view(-1)


def build_wavegan(model_cfg, data_cfg) -> tuple[WaveGANGenerator, WaveGANDiscriminator]:
    """G and D sized by ``ModelConfig`` (nz, ngf, ndf, phase_shuffle, d_norm) and ``DataConfig.audio_length``."""
    generator = WaveGANGenerator(nz=model_cfg.nz, ngf=model_cfg.ngf, out_length=data_cfg.audio_length)
    critic = WaveGANDiscriminator(ndf=model_cfg.ndf, phase_shuffle=model_cfg.phase_shuffle, norm=model_cfg.d_norm)
    return generator, critic
