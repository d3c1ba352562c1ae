"""Generator and discriminator networks. Imports only torch.

Every generator maps z of shape (B, nz) to samples in [-1, 1]: images (B, C, H, W) or audio
(B, 1, L). Every discriminator returns one logit (or critic value) per sample, shape (B,).
"""

from __future__ import annotations

import torch.nn as nn

from .dcgan import DCGANDiscriminator, DCGANGenerator
from .mlp import MLPDiscriminator, MLPGenerator


def build_models(model_cfg, data_cfg) -> tuple[nn.Module, nn.Module]:
    """(G, D) for a ModelConfig/DataConfig pair."""
    if model_cfg.arch == "mlp":
        shape = (data_cfg.channels, data_cfg.resolution, data_cfg.resolution)
        return MLPGenerator(model_cfg.nz, shape), MLPDiscriminator(shape)
    if model_cfg.arch == "dcgan" and getattr(model_cfg, "num_classes", 0):
        from .conditional import build_conditional

        return build_conditional(model_cfg, data_cfg)  # G(z, y), D(x, y)
    if model_cfg.arch == "dcgan":
        g = DCGANGenerator(model_cfg.nz, model_cfg.ngf, data_cfg.channels, data_cfg.resolution)
        d = DCGANDiscriminator(model_cfg.ndf, data_cfg.channels, data_cfg.resolution, norm=model_cfg.d_norm)
        return g, d
    if model_cfg.arch == "cyclegan":
        from .cyclegan import build_cyclegan

        return build_cyclegan(model_cfg, data_cfg)  # G(image) → image, D(image) → patch scores
    if model_cfg.arch == "pix2pix":
        from .pix2pix import build_pix2pix

        return build_pix2pix(model_cfg, data_cfg)  # G(condition) → image, D(condition, image) → patch logits
    if model_cfg.arch == "stylegan":
        from .stylegan import build_stylegan

        return build_stylegan(model_cfg, data_cfg)
    if model_cfg.arch == "wavegan":
        from .wavegan import build_wavegan

        return build_wavegan(model_cfg, data_cfg)
    raise ValueError(f"unknown model.arch {model_cfg.arch!r}")


__all__ = ["build_models", "DCGANGenerator", "DCGANDiscriminator", "MLPGenerator", "MLPDiscriminator"]
