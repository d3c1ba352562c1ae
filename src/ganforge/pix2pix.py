"""Paired image editing (pix2pix, Isola et al. 2017): the losses, one D and one G update, batches, and
loading a trained editor.

Objective: D minimises the non-saturating GAN loss on (condition, target) pairs against (condition,
G(condition)) pairs, halved as in the paper (D learns at half G's rate); G minimises the adversarial loss
on its pairs plus ``train.l1_weight`` · L1(G(condition), target) (λ = 100 in the paper). Both losses are
means over every patch logit of the conditional PatchGAN.

``d_step`` and ``g_step`` are functions of their arguments only (the modules, the optimiser, the batch,
the weight): no global state, no RNG draw besides the dropout in G, which the caller seeds per step.
``Editor`` wraps the U-Net into what a registered version holds: degraded images in, edited images out.
The checkpoint is the common one (``checkpoint.TRAINING_STATE_KEYS``: G, G_ema, D, optimisers, step, rng,
config), so ``checkpoint.load_generator`` reads a pix2pix run's EMA generator as it does any other's.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PipelineConfig
from .edit_data import PairedDataset, condition, upsample


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy with logits against all-real (1) or all-fake (0) targets, mean over patches."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def d_loss(D: nn.Module, cond: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """½ (BCE(D(c, y), real) + BCE(D(c, G(c)), fake)); ``fake`` is detached by the caller."""
    return 0.5 * (adversarial_loss(D(cond, target), True) + adversarial_loss(D(cond, fake), False))


def g_loss(
    D: nn.Module, cond: torch.Tensor, target: torch.Tensor, fake: torch.Tensor, l1_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, adversarial, L1): BCE(D(c, G(c)), real) + l1_weight · mean |G(c) - y|."""
    adv = adversarial_loss(D(cond, fake), True)
    l1 = F.l1_loss(fake, target)
    return adv + l1_weight * l1, adv, l1


def d_step(
    G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, cond: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One discriminator update on a batch of pairs; G is run without gradients."""
    with torch.no_grad():
        fake = G(cond)
    opt_d.zero_grad(set_to_none=True)
    loss = d_loss(D, cond, target, fake)
    loss.backward()
    opt_d.step()
    return {"loss_d": loss.detach()}


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    cond: torch.Tensor,
    target: torch.Tensor,
    l1_weight: float,
) -> dict[str, torch.Tensor]:
    """One generator update: adversarial + l1_weight·L1; D's parameters get no gradient (restored after)."""
    opt_g.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    try:
        loss, adv, l1 = g_loss(D, cond, target, G(cond), l1_weight)
        loss.backward()
    finally:
        D.requires_grad_(True)
    opt_g.step()
    return {"loss_g": loss.detach(), "loss_g_adv": adv.detach(), "l1": l1.detach()}


def paired_batch(ds: PairedDataset, index: torch.Tensor | np.ndarray, cfg: PipelineConfig) -> tuple:
    """(condition, target) float tensors in [-1, 1] for the pairs at ``index`` (CPU; the caller moves them)."""
    idx = np.asarray(index, dtype=np.int64)
    inputs = torch.from_numpy(np.array(ds.inputs[idx]))  # copies: the arrays are read-only memory maps
    masks = torch.from_numpy(np.array(ds.masks[idx])) if ds.masks is not None else None
    target = torch.from_numpy(np.array(ds.targets[idx])).float().div(127.5).sub(1.0)
    return condition(inputs, masks, cfg.data.task, cfg.data.resolution), target


def load_editor(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """(the EMA generator in eval mode, config) from a pix2pix run directory or its checkpoint.pt."""
    from .checkpoint import CheckpointError, checkpoint_file, generator_from_checkpoint, read_checkpoint

    path = checkpoint_file(path)
    ckpt = read_checkpoint(path)
    cfg = PipelineConfig.from_dict(ckpt["config"])
    if cfg.model.arch != "pix2pix":
        raise CheckpointError(
            f"{path} is a {cfg.name} checkpoint, not a pix2pix one; edit with a run trained by a pix2pix preset "
            "(pix2pix-sr, pix2pix-inpaint)"
        )
    G, cfg = generator_from_checkpoint(ckpt, path, ema=True, device=device)
    return G.requires_grad_(False), cfg


class Editor(nn.Module):
    """The U-Net as a whole editing step, the program a registered pix2pix version holds (images in [-1, 1]
    in, edited images in [-1, 1] out, no ganforge needed to use it):

    - ``sr``: B×C×(R/2)×(R/2) low-resolution images → bicubic-upsampled, clamped (``edit_data.upsample``)
      → G → B×C×R×R.
    - ``inpaint``: B×(C+1)×R×R, the mean-filled images and the hole mask as one more channel (+1 in the
      hole, -1 visible: ``edit_data.condition``) → G → B×C×R×R, G's pixels inside the hole and the input's
      outside it (as ``edit.composite``).
    """

    def __init__(self, G: nn.Module, task: str, resolution: int, channels: int):
        super().__init__()
        self.G, self.task, self.resolution, self.channels = G, task, resolution, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "sr":
            return self.G(upsample(x, self.resolution))
        out = self.G(x)
        hole = (x[:, self.channels :] > 0).expand_as(out)
        return torch.where(hole, out, x[:, : self.channels])


def as_editor(G: nn.Module, cfg: PipelineConfig) -> nn.Module:
    """``Editor`` around a bare U-Net of ``cfg``; an editor already (an ``Editor``, or the program a
    registered version loads as) is returned as it is."""
    from .models.pix2pix import UNetGenerator

    if isinstance(G, UNetGenerator):
        return Editor(G, cfg.data.task, cfg.data.resolution, cfg.data.channels)
    return G


def editor_inputs(inputs_u8: torch.Tensor, masks: torch.Tensor | None, task: str) -> torch.Tensor:
    """An ``Editor``'s input from uint8 degraded images (and hole masks): sr: the low-resolution images in
    [-1, 1]; inpaint: the mean-filled images in [-1, 1] and the mask channel (+1 hole, -1 visible)."""
    x = inputs_u8.float().div(127.5).sub(1.0)
    if task == "sr":
        return x
    return condition(inputs_u8, masks, task, inputs_u8.shape[-1])
