"""The typed groups of a run's configuration (data, model, train, eval, registry) and their checks.

Each group is a frozen dataclass validated in ``__post_init__``; ``ganforge.config.PipelineConfig``
combines them and checks what spans groups.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, fields
from typing import Any

from .errors import GanforgeError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"


class ConfigError(GanforgeError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from and the shape it is prepared to."""

    source: str = DEFAULT_IDX_DIR
    """IDX directory, image folder, WAV folder, ``torchvision:NAME``, ``espeak:sc09`` or ``s3://`` prefix."""
    kind: str = "image"
    """``image`` (N×C×H×W uint8) or ``audio`` (N×1×L int16)."""
    split: str = "train"
    """Split to train on, for sources that have splits (IDX, torchvision)."""
    reference_split: str = "test"
    """Split used as the FID reference; sources without splits fall back to ``split``."""
    resolution: int = 28
    """Image side in pixels (images are square)."""
    channels: int = 1
    audio_length: int = 16384
    sample_rate: int = 16000
    limit: int | None = None
    """Keep at most this many examples (the first ones, deterministic); None keeps all."""
    source_b: str = ""
    """Unpaired translation (``cyclegan``): domain B's source; empty means ``source`` (then ``class_b`` picks B)."""
    class_a: int = -1
    """Unpaired translation: keep only this label of ``source`` as domain A (an IDX class id); -1 keeps all."""
    class_b: int = -1
    """Unpaired translation: keep only this label of domain B's source; -1 keeps all."""
    task: str = ""
    """Paired editing (``pix2pix``): ``sr`` (super-resolution from half size) or ``inpaint``; empty otherwise."""
    mask: str = "centre"
    """``inpaint``: the holes — ``centre`` (the central half-side square), ``random`` (a seeded box per image)
    or ``mixed`` (each image one of the two, seeded)."""
    mask_seed: int = 0
    """``inpaint``: seed of the random and mixed masks (a function of (mask_seed, split, index))."""

    def __post_init__(self) -> None:
        _one_of("data.kind", self.kind, ("image", "audio"))
        _one_of("data.split", self.split, ("train", "test"))
        _one_of("data.reference_split", self.reference_split, ("train", "test"))
        if self.kind == "image":
            _one_of("data.resolution", self.resolution, (28, 32, 64))
            _one_of("data.channels", self.channels, (1, 3))
        else:
            _check(self.channels == 1, "data.channels must be 1 for audio (mono)")
            _one_of("data.audio_length", self.audio_length, (16384,))
        _check(self.limit is None or self.limit > 0, f"data.limit={self.limit} must be positive or None")
        _check(self.class_a >= -1 and self.class_b >= -1, "data.class_a/class_b must be a class id >= 0, or -1 (all)")
        _one_of("data.task", self.task, ("", "sr", "inpaint"))
        _one_of("data.mask", self.mask, ("centre", "random", "mixed"))


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture. Resolution and channels come from DataConfig."""

    arch: str = "dcgan"
    """``mlp`` (vanilla GAN), ``dcgan``, ``stylegan`` (StyleGAN2-style, models/stylegan.py), ``wavegan`` or
    ``cyclegan`` (ResNet generator + PatchGAN, unpaired A↔B) or ``pix2pix`` (U-Net + conditional PatchGAN, paired)."""
    nz: int = 100
    """Latent size."""
    ngf: int = 64
    """Generator width (DCGAN/WaveGAN feature maps at the finest level)."""
    ndf: int = 64
    """Discriminator width."""
    d_norm: str = "batch"
    """Discriminator normalisation: ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP critic), ``spectral`` (SNGAN)."""
    phase_shuffle: int = 2
    """WaveGAN discriminator phase shuffle radius (samples); 0 disables it."""
    num_classes: int = 0
    """Class-conditional models (``cdcgan``): the number of classes of the labels; 0 is unconditional."""
    n_blocks: int = 6
    """``cyclegan``: residual blocks of the ResNet generator (between its 2 down- and 2 up-sampling convs)."""
    mapping_layers: int = 4
    """``stylegan``: fully connected layers of the mapping network z → w (width nz; the paper has 8)."""

    def __post_init__(self) -> None:
        _one_of("model.arch", self.arch, ("mlp", "dcgan", "stylegan", "wavegan", "cyclegan", "pix2pix"))
        _check(self.n_blocks >= 1, f"model.n_blocks={self.n_blocks} must be >= 1")
        _one_of("model.d_norm", self.d_norm, ("batch", "layer", "none", "spectral"))
        _check(self.nz > 0 and self.ngf > 0 and self.ndf > 0, "model.nz, ngf, ndf must be positive")
        _check(self.phase_shuffle >= 0, "model.phase_shuffle must be >= 0")
        _check(self.mapping_layers >= 1, f"model.mapping_layers={self.mapping_layers} must be >= 1")
        _check(
            self.num_classes == 0 or (self.num_classes >= 2 and self.arch == "dcgan"),
            f"model.num_classes={self.num_classes}: 0 (unconditional) or >= 2 with model.arch='dcgan' "
            "(the class-conditional DCGAN)",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training loop."""

    loss: str = "bce"
    """``bce`` (non-saturating, with logits), ``hinge``, ``wgan-gp`` or ``lsgan`` (least squares; ``cyclegan``)."""
    batch_size: int = 64
    """Global batch: split evenly across ranks (each rank takes batch_size // world_size)."""
    epochs: int = 5
    max_steps: int | None = None
    """Stop after this many generator steps (overrides epochs when smaller)."""
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 1
    """Discriminator steps per generator step."""
    gp_weight: float = 10.0
    """Gradient-penalty weight λ for ``wgan-gp``."""
    ema_decay: float = 0.999
    """Decay of the generator's exponential moving average (used for evaluation and samples)."""
    seed: int = 0
    checkpoint_every: int = 200
    """Write checkpoint.pt every this many generator steps (and at the end)."""
    log_every: int = 10
    nproc: int = 1
    """Ranks on this node (torchrun --nproc-per-node)."""
    nnodes: int = 1
    launcher: str = "local"
    """Where the train step runs the ranks: ``local`` (torchrun inside the step's pod/process),
    ``trainjob`` (Kubeflow Trainer TrainJob) or ``pytorchjob`` (Training Operator PyTorchJob)."""
    amp: str = "off"
    """Mixed precision: ``off``, ``bf16`` or ``fp16`` (GPU; bf16 allowed on CPU when asked)."""
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = True
    """Deterministic algorithms and seeding, so a resumed run matches an uninterrupted one."""
    diffaugment: str = ""
    """DiffAugment policy, e.g. ``color,translation`` (empty disables it)."""
    r1_gamma: float = 0.0
    """R1 penalty weight on real data (0 disables it)."""
    r1_interval: int = 1
    """Lazy R1 (StyleGAN2): the penalty on every this-many-th discriminator step only, its weight
    multiplied by the interval so its average strength stays r1_gamma; 1 is every step."""
    style_mixing: float = 0.0
    """``stylegan``: probability that a generator batch mixes two latents' styles at a random layer
    (style-mixing regularisation; the paper uses 0.9); 0 disables it."""
    snapshot_every: int = 0
    """Keep the EMA generator of every this many epochs as ``snapshots/epoch_NNN.pt`` (for the FID
    curve); 0 keeps none."""
    cycle_weight: float = 10.0
    """``cyclegan``: λ of the cycle-consistency L1 loss (Zhu et al. 2017: 10)."""
    identity_weight: float = 0.5
    """``cyclegan``: identity-loss weight as a fraction of ``cycle_weight`` (0.5 → λ_identity = 5)."""
    pool_size: int = 50
    """``cyclegan``: past fakes kept per domain for the discriminators (Shrivastava et al. 2017); 0 disables."""
    l1_weight: float = 100.0
    """``pix2pix``: λ of the L1 loss to the target beside the adversarial loss (Isola et al. 2017: 100)."""

    def __post_init__(self) -> None:
        _one_of("train.loss", self.loss, ("bce", "hinge", "wgan-gp", "lsgan"))
        _check(self.cycle_weight >= 0 and self.identity_weight >= 0, "train.cycle_weight/identity_weight must be >= 0")
        _check(self.pool_size >= 0, "train.pool_size must be >= 0 (0 disables the pool)")
        _check(self.l1_weight >= 0, f"train.l1_weight={self.l1_weight} must be >= 0")
        _one_of("train.amp", self.amp, ("off", "bf16", "fp16"))
        _one_of("train.launcher", self.launcher, ("local", "trainjob", "pytorchjob"))
        _check(self.batch_size > 0, "train.batch_size must be positive")
        _check(self.epochs > 0, "train.epochs must be positive")
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps must be positive or None")
        _check(self.lr_g > 0 and self.lr_d > 0, "train.lr_g and lr_d must be positive")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2 must be in [0, 1)")
        _check(self.n_critic >= 1, "train.n_critic must be >= 1")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.checkpoint_every > 0 and self.log_every > 0, "train.checkpoint_every/log_every must be positive")
        _check(self.nproc >= 1 and self.nnodes >= 1, "train.nproc and nnodes must be >= 1")
        world = self.nproc * self.nnodes
        _check(
            self.batch_size % world == 0,
            f"train.batch_size={self.batch_size} must be divisible by nproc*nnodes={world} "
            "(the global batch is split evenly across ranks)",
        )
        for policy in filter(None, self.diffaugment.split(",")):
            _one_of("train.diffaugment policy", policy, ("color", "translation", "cutout"))
        _check(self.r1_gamma >= 0, "train.r1_gamma must be >= 0")
        _check(self.r1_interval >= 1, f"train.r1_interval={self.r1_interval} must be >= 1 (1 = R1 on every D step)")
        _check(0 <= self.style_mixing <= 1, f"train.style_mixing={self.style_mixing} must be a probability in [0, 1]")
        _check(self.snapshot_every >= 0, "train.snapshot_every must be >= 0 (epochs; 0 keeps no snapshots)")


@dataclass(frozen=True)
class EvalConfig:
    """FID/KID evaluation."""

    n_samples: int = 2000
    """Generated and real samples compared (FID is biased at small N: compare only at equal N)."""
    batch_size: int = 50
    kid_subset_size: int = 1000
    """KID subset size; clipped to n_samples."""
    kid_subsets: int = 100
    curve_samples: int = 2000
    """Generated samples per point of the FID curve over training snapshots (against the same
    real reference as the final FID)."""

    def __post_init__(self) -> None:
        _check(self.n_samples >= 2, "eval.n_samples must be >= 2")
        _check(self.curve_samples >= 2, "eval.curve_samples must be >= 2")
        _check(
            self.batch_size > 0 and self.kid_subset_size > 1 and self.kid_subsets > 0,
            "eval.batch_size, kid_subset_size, kid_subsets must be positive",
        )


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow model registry and the promotion rule."""

    model_name: str = ""
    """Registered model name; empty means the pipeline's name."""
    promotion_margin: float = 0.0
    """A new version becomes champion only if its FID < champion FID - margin."""

    def __post_init__(self) -> None:
        _check(self.promotion_margin >= 0, "registry.promotion_margin must be >= 0")


CONFIG_GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "registry": RegistryConfig,
}


def config_keys() -> list[str]:
    """Every overridable ``group.field`` key."""
    return [f"{g}.{f.name}" for g, klass in CONFIG_GROUPS.items() for f in fields(klass)]


def unknown_key_error(key: str) -> ConfigError:
    """A ConfigError for an unknown ``group.field`` key, with the closest known key when there is one."""
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known groups: {', '.join(CONFIG_GROUPS)}"
    return ConfigError(f"unknown config key {key!r}: {hint} (see the dataclasses in src/ganforge/config_groups.py)")


def field_type(group: str, name: str) -> Any:
    """The annotated type of ``group.name`` (``int``, ``Optional[int]``, …); ConfigError if unknown."""
    klass = CONFIG_GROUPS.get(group)
    hints = typing.get_type_hints(klass) if klass is not None else {}
    if name not in hints:
        raise unknown_key_error(f"{group}.{name}")
    return hints[name]
