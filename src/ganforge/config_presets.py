"""Named presets (what a pipeline trains) and profiles (how much compute), merged by ``build_config``."""

from __future__ import annotations

# Presets: the architecture and loss of each named pipeline. Seeds stay faithful
# (gan, dcgan): Adam(2e-4, (0.5, 0.999)), non-saturating BCE. Improvements go in
# presets of their own.
PRESETS: dict[str, dict] = {
    "gan": {"model": {"arch": "mlp"}, "train": {"loss": "bce"}},
    "dcgan": {"model": {"arch": "dcgan"}, "train": {"loss": "bce"}},
    "wgan-gp": {
        "model": {"arch": "dcgan", "d_norm": "layer"},
        "train": {
            "loss": "wgan-gp",
            "n_critic": 5,
            "gp_weight": 10.0,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "beta1": 0.5,
            "beta2": 0.9,
        },
    },
    # SNGAN-style (Miyato et al. 2018) DCGAN: spectral norm in D instead of BatchNorm, hinge
    # loss, two time-scale learning rates (Heusel et al. 2017: D twice as fast as G), EMA of G.
    # At 28 px it trails the plain dcgan (README, "Generation quality"): the 3-conv discriminator
    # is too shallow once every layer is 1-Lipschitz.
    "sngan": {
        "model": {"arch": "dcgan", "d_norm": "spectral"},
        "train": {"loss": "hinge", "lr_g": 2e-4, "lr_d": 4e-4, "beta1": 0.5, "beta2": 0.999, "ema_decay": 0.999},
    },
    # Class-conditional DCGAN: class-conditional BatchNorm in G, a projection discriminator
    # (Miyato & Koyama 2018) on the DCGAN D; otherwise the dcgan recipe (BCE, Adam 2e-4, β = (0.5, 0.999)).
    # 10 classes: Fashion-MNIST; another labelled source sets model.num_classes to its class count.
    "cdcgan": {"model": {"arch": "dcgan", "num_classes": 10}, "train": {"loss": "bce"}},
    # Unpaired image-to-image translation, Zhu et al. 2017's recipe: least-squares GAN loss, cycle
    # λ = 10, identity 0.5·λ, a 50-image pool of past fakes, Adam(2e-4, β1 0.5), ResNet G + PatchGAN D with
    # instance norm; EMA of both generators. Default domains: Fashion-MNIST sneaker (7) ↔ ankle boot (9),
    # two shoe shapes with a real, learnable mapping (low-top ↔ high-top) and 6,000 train / 1,000 test each.
    "cyclegan": {
        "data": {"class_a": 7, "class_b": 9},
        "model": {"arch": "cyclegan", "ngf": 32, "ndf": 64, "n_blocks": 6},
        "train": {"loss": "lsgan", "batch_size": 8, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999},
    },
    # Paired image editing, Isola et al. 2017's recipe: U-Net G with skips, conditional PatchGAN D (BatchNorm),
    # non-saturating GAN loss + λ·L1 with λ = 100, Adam(2e-4, β1 0.5), batch 1 in the paper (here 16, and the
    # profile's batch where it sets one, for throughput); EMA of G. The pairs come from Fashion-MNIST itself
    # (ganforge.edit_data): sr: 14 → 28 px; inpaint: a 14×14 centre hole (data.mask: random / mixed boxes).
    "pix2pix-sr": {
        "data": {"task": "sr"},
        "model": {"arch": "pix2pix", "ngf": 32, "ndf": 32},
        "train": {"loss": "bce", "batch_size": 16, "l1_weight": 100.0, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    },
    "pix2pix-inpaint": {
        "data": {"task": "inpaint", "mask": "centre"},
        "model": {"arch": "pix2pix", "ngf": 32, "ndf": 32},
        "train": {"loss": "bce", "batch_size": 16, "l1_weight": 100.0, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    },
    # StyleGAN2-style (models/stylegan.py): mapping network, modulated/demodulated convs, noise
    # inputs, skip G, residual D with minibatch stddev; the StyleGAN2 recipe — non-saturating logistic
    # loss, lazy R1 every 16 D steps, style mixing 0.9, Adam(0.0025, β = (0, 0.99)) as stylegan2-ada's
    # small-resolution configs, EMA of G. γ = 0.01: stylegan2-ada's CIFAR-10 setting (its heuristic
    # 0.0002·res²/batch gives 0.0025 at 28 px, batch 64). Mixing, R1 and mapping depth against the seed
    # noise: README, "StyleGAN's switches".
    "stylegan": {
        "model": {"arch": "stylegan", "d_norm": "none", "nz": 128, "mapping_layers": 4},
        "train": {
            "loss": "bce",
            "lr_g": 0.0025,
            "lr_d": 0.0025,
            "beta1": 0.0,
            "beta2": 0.99,
            "r1_gamma": 0.01,
            "r1_interval": 16,
            "style_mixing": 0.9,
            "ema_decay": 0.999,
        },
    },
    "wavegan": {
        "data": {"kind": "audio", "source": "espeak:sc09", "reference_split": "train"},
        "model": {"arch": "wavegan", "d_norm": "none", "ngf": 64, "ndf": 64, "phase_shuffle": 2},
        "train": {
            "loss": "wgan-gp",
            "n_critic": 5,
            "gp_weight": 10.0,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "beta1": 0.5,
            "beta2": 0.9,
            "channels_last": False,
        },
    },
}

# Profiles: how much compute. tiny = seconds (tests); local = a laptop CPU in ≤ 15 min;
# full = the GPU cluster.
PROFILES: dict[str, dict] = {
    "tiny": {
        "data": {"limit": 512},
        "model": {"ngf": 8, "ndf": 8},
        "train": {
            "batch_size": 32,
            "epochs": 1,
            "max_steps": 8,
            "checkpoint_every": 4,
            "log_every": 2,
            "snapshot_every": 1,
        },
        # a one-point FID curve, taken from the final evaluation's samples: the curve path at no cost
        "eval": {"n_samples": 64, "kid_subset_size": 32, "kid_subsets": 10, "curve_samples": 32},
    },
    "local": {
        # 10 epochs of the 60k images at 28 px fit the ≤ 15 min budget on a 2-core CPU.
        "data": {"limit": None},
        "model": {"ngf": 32, "ndf": 32},
        "train": {"batch_size": 64, "epochs": 10, "checkpoint_every": 500, "log_every": 50},
        "eval": {"n_samples": 1000, "kid_subset_size": 500},
    },
    "quality": {
        # The FID-10k protocol on a 2-core CPU in about an hour: full data, 64-wide nets,
        # 20 epochs, a snapshot for the FID curve every 4 epochs.
        "data": {"limit": None},
        "model": {"ngf": 64, "ndf": 64},
        "train": {"batch_size": 64, "epochs": 20, "checkpoint_every": 500, "log_every": 100, "snapshot_every": 4},
        "eval": {"n_samples": 10000, "curve_samples": 2000},
    },
    "full": {
        # fp32: these steps are bound by kernel launches, not matmul throughput, so bf16 autocast's
        # casts cost more than it saves (docs/gpu.md). `--set train.amp=bf16` turns it on.
        "train": {
            "batch_size": 128,
            "epochs": 50,
            "checkpoint_every": 1000,
            "amp": "off",
            "nproc": 1,
            "snapshot_every": 5,
        },
        "eval": {"n_samples": 10000, "curve_samples": 2000},
    },
}

# Per-preset adjustments to a profile where the generic one does not fit.
PRESET_PROFILE: dict[tuple[str, str], dict] = {
    ("wavegan", "tiny"): {
        "data": {"limit": 64},
        "train": {"batch_size": 4, "max_steps": 3},
        "eval": {"n_samples": 32, "kid_subset_size": 16, "curve_samples": 16},
    },
    ("wavegan", "local"): {
        "data": {"limit": None},
        "train": {"batch_size": 32, "epochs": 20},
        "eval": {"n_samples": 500, "kid_subset_size": 250},
    },
    # wavegan quality: the synthesised digits (2,000 clips), 8-wide nets, 6 epochs of batch 16 = 750 critic
    # steps = 150 G steps, 4-15 min a seed on the shared 2-core machine; scored by the SC09 classifier on
    # 1,000 clips. Sized for the CPU, not for digits: docs/quality.md#wavegan-spoken-digits.
    ("wavegan", "quality"): {
        "data": {"limit": None},
        "model": {"ngf": 8, "ndf": 8},
        "train": {"batch_size": 16, "epochs": 6, "checkpoint_every": 125, "log_every": 25, "snapshot_every": 0},
        "eval": {"n_samples": 1000},
    },
    ("wgan-gp", "local"): {"train": {"epochs": 3, "batch_size": 64}},
    ("cyclegan", "tiny"): {
        "data": {"limit": 64},
        "model": {"ngf": 4, "ndf": 4, "n_blocks": 1},
        "train": {"batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "log_every": 2, "pool_size": 6},
        "eval": {"n_samples": 16, "kid_subset_size": 8},
    },
    ("cyclegan", "local"): {
        "model": {"ngf": 16, "ndf": 32, "n_blocks": 3},
        "train": {"batch_size": 8, "epochs": 2, "checkpoint_every": 250, "log_every": 50},
        "eval": {"n_samples": 1000, "kid_subset_size": 500},
    },
    # cyclegan quality: 3,000 steps of batch 8, about an hour on one thread.
    ("cyclegan", "quality"): {
        "model": {"ngf": 32, "ndf": 64, "n_blocks": 6},
        "train": {"batch_size": 8, "epochs": 4, "checkpoint_every": 500, "log_every": 100, "snapshot_every": 0},
        "eval": {"n_samples": 1000, "kid_subset_size": 500},
    },
    ("cyclegan", "full"): {"train": {"batch_size": 8, "amp": "off"}},
    # stylegan: one step costs about twice a dcgan step (README, "StyleGAN"), so its profiles are narrower:
    # local fits the ≤ 15 min budget on 2 cores; quality is about 2.5 h on one thread.
    ("stylegan", "local"): {"model": {"ngf": 16, "ndf": 16}, "train": {"epochs": 1, "checkpoint_every": 200}},
    ("stylegan", "quality"): {"model": {"ngf": 16, "ndf": 16}, "train": {"epochs": 9, "snapshot_every": 3}},
}


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, one level deep (groups are merged field by field)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out
