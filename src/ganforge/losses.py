"""GAN losses on logits (or critic values), and the penalties that regularise D.

BCE works on logits (softplus form) rather than the seeds' Sigmoid + BCELoss, which
saturates to log(0) once D is confident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ls_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): mean (D(x) - target)² over every score (every patch)."""
    return F.mse_loss(scores, torch.full_like(scores, target))


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss for ``bce`` (non-saturating GAN), ``hinge`` (SNGAN), ``wgan-gp`` (critic) or ``lsgan``
    (least squares, each half weighted ½ as in CycleGAN)."""
    if kind == "bce":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    if kind == "lsgan":
        return 0.5 * (ls_loss(real_logits, 1.0) + ls_loss(fake_logits, 0.0))
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: non-saturating -log D(G(z)) for ``bce``, -D(G(z)) for hinge and WGAN, (D(G(z)) - 1)² for
    ``lsgan``."""
    if kind == "bce":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    if kind == "lsgan":
        return ls_loss(fake_logits, 1.0)
    raise ValueError(f"unknown loss {kind!r}")


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(‖∇D(x̂)‖₂ − 1)²] at x̂ = εx + (1−ε)x̃, ε ~ U[0, 1] per sample."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[‖∇D(x)‖²] on real data; ``real`` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()
