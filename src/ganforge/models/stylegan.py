"""A CPU-sized StyleGAN2 (Karras et al. 2020) for 28 and 32 px images. Imports only torch.

Generator ("skip" G of StyleGAN2):
  mapping    z → w: pixel-norm, then ``mapping_layers`` fully connected layers of width nz
             (learning-rate multiplier 0.01, as in the paper); tracks the running mean ``w_avg``
             for the truncation trick.
  synthesis  a learned constant at the coarsest side, then per resolution a ×2 upsampling
             modulated 3×3 conv and a modulated 3×3 conv, each followed by per-pixel noise
             (per-channel learned strength, initialised to 0), bias and leaky ReLU; every
             resolution adds its toRGB (modulated 1×1, not demodulated) to the upsampled image
             of the one before.

28 px is built as 7 → 14 → 28 with a 7×7 constant, not as 32 px cropped to 28: every synthesised
pixel is a pixel the discriminator sees (32² costs 1.31× the convolution work of 28² and the
crop would hide the border from D, so G could leave it unconstrained), and the sides stay the
same as the dcgan preset's at 28 px. 32 px is 4 → 8 → 16 → 32 with the paper's 4×4 constant.

Modulated convolution: the weight is scaled per sample by the style s = A(w) and, unless it is a
toRGB, demodulated — divided by the L2 norm of each output channel's scaled kernel — so a
unit-variance input gives unit-variance outputs whatever the style (the paper's replacement
for AdaIN). On CUDA it runs as one grouped convolution with the batch folded into the groups,
as in the paper's implementation; on CPU as the equal scale-conv-scale form, 1.5–23× faster there
(``modulated_conv2d`` has the numbers).

Noise in eval mode: each layer uses a fixed noise map drawn at construction (a buffer, the
official implementation's ``noise_mode='const'``), so samples, FID and the exported program are
a function of z alone; training draws fresh noise from torch's global RNG, which the training
loop reseeds per (seed, step, rank).

Discriminator: residual (StyleGAN2 "resnet" D) — fromRGB 1×1, per resolution two 3×3 convs with
a 2× average-pool downsample and a 1×1 skip, summed with 1/√2; at the coarsest side a
minibatch-stddev channel (group of up to 4), a 3×3 conv and two fully connected layers.

Every layer uses the equalised learning rate: weights drawn from N(0, 1) and scaled at run time
by lr_mul/√fan_in (with Adam this equalises the effective step size across layers).

Style layers: ``num_ws`` = 2·levels; w index i modulates conv i and, when odd, also the toRGB of
the resolution it ends (the paper's sharing between a toRGB and the next block's first conv):
28 px has w0 conv7, w1 toRGB7 + up-conv14, w2 conv14, w3 toRGB14 + up-conv28, w4 conv28,
w5 toRGB28. ``style_layer_sides`` gives each index's side; ``layer_group`` maps the paper's
coarse (≤ 8 px), middle (14–16 px) and fine (≥ 28 px) styles to index ranges.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

START_SIDE = {28: 7, 32: 4}
W_AVG_BETA = 0.995
"""Decay of the running mean of w (stylegan2-ada-pytorch's ``w_avg_beta``)."""
LAYER_GROUPS = {"coarse": (0, 8), "middle": (9, 16), "fine": (17, 10**6)}
"""Style groups by the side (px) of the layers they modulate, both ends included."""
_LRELU_GAIN = math.sqrt(2.0)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * _LRELU_GAIN


class EqualLinear(nn.Module):
    """Fully connected layer with the equalised learning rate (weight N(0, 1/lr_mul²), scaled at run time)."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init)))
        self.weight_gain, self.lr_mul, self.act = lr_mul / math.sqrt(c_in), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _lrelu(x) if self.act else x


class EqualConv2d(nn.Module):
    """Conv2d with the equalised learning rate; ``down`` average-pools 2× first."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True, act: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain, self.act, self.down = 1 / math.sqrt(c_in * kernel * kernel), act, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(x) if self.act else x


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, grouped: bool
) -> torch.Tensor:
    """Per-sample conv of x (B, I, H, W) with ``weight`` (O, I, k, k) scaled by ``styles`` (B, I) on the input
    channels and, with ``demodulate``, divided by the L2 norm of each output channel's scaled kernel.

    ``grouped``: the paper's form — every sample's scaled kernel built, one grouped conv with the batch in the
    groups. Otherwise the same arithmetic as scale input → shared conv → scale output (stylegan2-ada-pytorch's
    ``fused_modconv=False``), the demodulation factors from (s²)·(Σ_k W²)ᵀ. Measured on this CPU (one thread,
    batch 64, forward + backward, one 3×3 layer, grouped vs shared): 128 channels at 7 px 1006 vs 43 ms, 64 at
    14 px 157 vs 58 ms, 32 at 28 px 94 vs 64 ms; grouped convolutions are slow on CPU, so the layers use the
    grouped form on CUDA only. The shared-conv form also keeps the batch out of the graph's shapes, which
    torch.export's dynamic batch needs."""
    k = weight.shape[-1]
    if grouped:
        batch, c_in, h, w = x.shape
        c_out = weight.shape[0]
        wgt = weight[None] * styles[:, None, :, None, None]  # B, O, I, k, k
        if demodulate:
            wgt = wgt * torch.rsqrt(wgt.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        x = x.reshape(1, batch * c_in, h, w)
        out = F.conv2d(x, wgt.reshape(batch * c_out, c_in, k, k), padding=k // 2, groups=batch)
        return out.reshape(batch, c_out, h, w)
    x = F.conv2d(x * styles[:, :, None, None], weight, padding=k // 2)
    if demodulate:
        x = x * torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)[:, :, None, None]
    return x


class ModulatedConv(nn.Module):
    """Affine A(w) → style; modulated (and demodulated) conv; optional 2× bilinear upsampling before it;
    then noise, bias and leaky ReLU (a toRGB has neither noise nor activation nor demodulation)."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int, side: int, up: bool = False, rgb: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # styles start at 1: the plain conv
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.weight_gain, self.up, self.rgb = 1 / math.sqrt(c_in * kernel * kernel), up, rgb
        if not rgb:
            self.noise_strength = nn.Parameter(torch.zeros(c_out))
            self.register_buffer("noise_const", torch.randn(1, 1, side, side))

    def modulated(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """The (upsampled,) modulated and demodulated conv alone: before noise, bias and activation."""
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return modulated_conv2d(x, self.weight, styles, demodulate=True, grouped=x.is_cuda)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        if self.rgb:  # the paper scales toRGB styles by the weight gain instead of demodulating
            x = modulated_conv2d(x, self.weight, styles * self.weight_gain, demodulate=False, grouped=x.is_cuda)
            return x + self.bias[None, :, None, None]
        x = self.modulated(x, styles)
        if self.training:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        else:
            noise = self.noise_const
        x = x + noise * self.noise_strength[None, :, None, None] + self.bias[None, :, None, None]
        return _lrelu(x)


def _sides(resolution: int) -> list[int]:
    if resolution not in START_SIDE:
        raise ValueError(f"the stylegan models support resolutions {sorted(START_SIDE)}, not {resolution}")
    side, sides = START_SIDE[resolution], []
    while side <= resolution:
        sides.append(side)
        side *= 2
    return sides


def _width(ch: int, side: int, resolution: int) -> int:
    """Feature maps at ``side``: ``ch`` at the image's side, doubled at every coarser level, at most 4·ch."""
    return ch * min(4, resolution // side)


class MappingNetwork(nn.Module):
    def __init__(self, nz: int, layers: int, lr_mul: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(*[EqualLinear(nz, nz, lr_mul=lr_mul, act=True) for _ in range(layers)])
        self.register_buffer("w_avg", torch.zeros(nz))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        w = self.net(z)
        if self.training:  # the mean of w the truncation trick pulls towards
            with torch.no_grad():
                # in float32 whatever autocast made w (bf16 under train.amp): w_avg is a float32 buffer
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, W_AVG_BETA))
        return w


def layer_group(style_layer_sides: list[int], name: str) -> range:
    """The w indices of a style group (``coarse``, ``middle``, ``fine``): those whose layers' side is in
    LAYER_GROUPS[name]. An index shared by a toRGB and the next block's first conv counts at the conv's side."""
    lo, hi = LAYER_GROUPS[name]
    found = [i for i, s in enumerate(style_layer_sides) if lo <= s <= hi]
    return range(found[0], found[-1] + 1) if found else range(0)


class StyleGANGenerator(nn.Module):
    """G(z) → images in [-1, 1]; ``mapping``, ``synthesis`` and ``truncate`` for truncation and style mixing."""

    def __init__(self, nz: int, ngf: int, channels: int, resolution: int, mapping_layers: int):
        super().__init__()
        self.nz = nz
        sides = _sides(resolution)
        self.mapping = MappingNetwork(nz, mapping_layers)
        c0 = _width(ngf, sides[0], resolution)
        self.const = nn.Parameter(torch.randn(c0, sides[0], sides[0]))
        self.convs = nn.ModuleList([ModulatedConv(c0, c0, nz, 3, sides[0])])
        self.to_rgbs = nn.ModuleList([ModulatedConv(c0, channels, nz, 1, sides[0], rgb=True)])
        c_prev = c0
        for side in sides[1:]:
            c = _width(ngf, side, resolution)
            self.convs.append(ModulatedConv(c_prev, c, nz, 3, side, up=True))
            self.convs.append(ModulatedConv(c, c, nz, 3, side))
            self.to_rgbs.append(ModulatedConv(c, channels, nz, 1, side, rgb=True))
            c_prev = c
        self.num_ws = 2 * len(sides)
        self.style_layer_sides = [sides[(i + 1) // 2] for i in range(self.num_ws - 1)]
        self.style_layer_sides.append(sides[-1])  # the last toRGB

    def layer_group(self, name: str) -> range:
        """The w indices of a style group (``coarse``, ``middle``, ``fine``); see ``layer_group``."""
        return layer_group(self.style_layer_sides, name)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """w pulled towards the tracked mean: w_avg + ψ(w − w_avg); ψ = 1 leaves w as it is."""
        return w if psi == 1 else self.mapping.w_avg.to(w.dtype).lerp(w, psi)

    def styles(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """The truncated w of each latent: ``truncate(mapping(z), psi)``."""
        return self.truncate(self.mapping(z), psi)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """Images from per-layer styles ws (B, num_ws, nz)."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        x = self.convs[0](x, ws[:, 0])
        img = self.to_rgbs[0](x, ws[:, 1])
        for level in range(1, len(self.to_rgbs)):
            i = 2 * level - 1
            x = self.convs[i](x, ws[:, i])
            x = self.convs[i + 1](x, ws[:, i + 1])
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            img = img + self.to_rgbs[level](x, ws[:, i + 2])
        return torch.tanh(img)

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        mix_z: torch.Tensor | None = None,
        mix_cutoff: int | None = None,
    ) -> torch.Tensor:
        """G(z); with ``mix_z`` and ``mix_cutoff`` the styles from index ``mix_cutoff`` on come from mix_z
        (style-mixing regularisation)."""
        ws = self.truncate(self.mapping(z), truncation_psi)[:, None].repeat(1, self.num_ws, 1)
        if mix_z is not None and mix_cutoff is not None:
            ws_mix = self.truncate(self.mapping(mix_z), truncation_psi)
            ws = torch.cat([ws[:, :mix_cutoff], ws_mix[:, None].expand(-1, self.num_ws - mix_cutoff, -1)], dim=1)
        return self.synthesis(ws)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """x with one more channel: the mean over features of the std over each group of ``group`` samples."""
    b, c, h, w = x.shape
    g = math.gcd(group, b)  # a group size that divides the batch (the last, smaller batch too)
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (B/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # (B, 1, H, W), sample i uses group i % (B/g)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3)
        self.conv1 = EqualConv2d(c_in, c_out, 3, down=True)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False, act=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / math.sqrt(2.0)


class StyleGANDiscriminator(nn.Module):
    """Residual D with minibatch stddev; one logit per sample."""

    def __init__(self, ndf: int, channels: int, resolution: int):
        super().__init__()
        sides = _sides(resolution)
        self.from_rgb = EqualConv2d(channels, _width(ndf, resolution, resolution), 1)
        self.blocks = nn.Sequential(
            *[
                DiscriminatorBlock(_width(ndf, side, resolution), _width(ndf, side // 2, resolution))
                for side in reversed(sides[1:])
            ]
        )
        c = _width(ndf, sides[0], resolution)
        self.conv = EqualConv2d(c + 1, c, 3)
        self.fc = EqualLinear(c * sides[0] * sides[0], c, act=True)
        self.out = EqualLinear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(x))
        x = self.conv(minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1))).view(-1)


def build_stylegan(model_cfg, data_cfg) -> tuple[nn.Module, nn.Module]:
    g = StyleGANGenerator(model_cfg.nz, model_cfg.ngf, data_cfg.channels, data_cfg.resolution, model_cfg.mapping_layers)
    d = StyleGANDiscriminator(model_cfg.ndf, data_cfg.channels, data_cfg.resolution)
    return g, d


@torch.no_grad()
def style_mixing_images(
    G: nn.Module, z_rows: torch.Tensor, z_cols: torch.Tensor, group: str, psi: float = 1.0
) -> torch.Tensor:
    """The StyleGAN paper's style-mixing table without its headers: R·C images, row-major; row i, column j
    has z_rows[i]'s styles except the ``group`` layers (coarse, middle, fine), which take z_cols[j]'s.
    ``G``: a ``StyleGANGenerator`` or anything with its ``styles``, ``num_ws``, ``layer_group`` and
    ``synthesis`` (a registered version's programs)."""
    w_rows, w_cols = G.styles(z_rows, psi), G.styles(z_cols, psi)
    ws = w_rows[:, None, None, :].repeat(1, len(z_cols), G.num_ws, 1)  # R, C, num_ws, nz
    layers = G.layer_group(group)
    ws[:, :, layers.start : layers.stop] = w_cols[None, :, None, :]
    return G.synthesis(ws.flatten(0, 1))
