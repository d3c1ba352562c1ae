"""One typed configuration per pipeline run.

A run's configuration is settled once at the entry point (preset + profile + a few
overrides), validated in ``__post_init__``, saved with the run (``config.json`` beside the
checkpoint, MLflow params) and passed to KFP components as JSON. Nothing downstream
re-reads the command line or the environment for training settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
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


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    profile: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def __post_init__(self) -> None:
        _one_of("name", self.name, tuple(PRESETS))
        _one_of("profile", self.profile, tuple(PROFILES))
        audio_model = self.model.arch == "wavegan"
        _check(
            audio_model == (self.data.kind == "audio"),
            f"model.arch={self.model.arch!r} does not fit data.kind={self.data.kind!r}",
        )
        if self.model.arch == "dcgan":
            _one_of("data.resolution for dcgan", self.data.resolution, (28, 32, 64))
        _check(
            (self.model.arch == "cyclegan") == (self.train.loss == "lsgan"),
            f"model.arch={self.model.arch!r} with train.loss={self.train.loss!r}: the cyclegan model trains with "
            "the least-squares loss 'lsgan' and only it does",
        )
        if self.model.arch == "cyclegan":
            d = self.data
            _check(
                bool(d.source_b) or (d.class_a >= 0 and d.class_b >= 0 and d.class_a != d.class_b),
                "cyclegan needs two domains: set data.source_b to domain B's folder, or data.class_a and "
                "data.class_b to two different class ids of data.source",
            )
            _check(
                self.train.nproc * self.train.nnodes == 1 and self.train.launcher == "local",
                "cyclegan trains on one rank (train.nproc=1, train.nnodes=1, train.launcher='local')",
            )
        _check(
            (self.model.arch == "pix2pix") == bool(self.data.task),
            f"model.arch={self.model.arch!r} with data.task={self.data.task!r}: the pix2pix model edits images "
            "of a paired task (data.task 'sr' or 'inpaint') and only it does",
        )
        if self.model.arch == "pix2pix":
            _check(
                self.data.kind == "image" and not self.model.num_classes and self.train.loss == "bce",
                "pix2pix edits images with the non-saturating GAN loss of Isola et al.: data.kind='image', "
                "model.num_classes=0, train.loss='bce'",
            )
            _check(
                self.train.nproc * self.train.nnodes == 1 and self.train.launcher == "local",
                "pix2pix trains on one rank (train.nproc=1, train.nnodes=1, train.launcher='local')",
            )
        if self.model.arch == "stylegan":
            _one_of("data.resolution for stylegan", self.data.resolution, (28, 32))
            _check(
                self.model.d_norm == "none" and not self.model.num_classes,
                "model.arch='stylegan' has its own unnormalised, unconditional discriminator: set model.d_norm='none' "
                "and model.num_classes=0",
            )
        _check(
            self.train.style_mixing == 0 or self.model.arch == "stylegan",
            f"train.style_mixing={self.train.style_mixing} needs model.arch='stylegan' (a mapping network and "
            "per-layer styles); set it to 0",
        )
        if self.model.num_classes:
            _check(
                self.train.loss != "wgan-gp",
                "train.loss='wgan-gp' is not supported with model.num_classes (the penalty would interpolate "
                "between images of different classes); use bce or hinge",
            )
        if self.train.loss == "wgan-gp":
            _check(
                self.model.d_norm != "batch",
                "train.loss='wgan-gp' needs a critic without BatchNorm: set model.d_norm to 'layer' or 'none' "
                "(the gradient penalty is per-sample; BatchNorm couples samples)",
            )

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def config_hash(self) -> str:
        """Short hash of what determines the trained model: every field but the run's bookkeeping
        (``BOOKKEEPING_FIELDS``: the profile's name, logging/checkpoint/snapshot cadences, launcher,
        torch.compile, and every ``eval.*`` and ``registry.*`` field), so runs that train the same
        model share it and ``--set train.log_every=…`` leaves it alone.

        Fields added after the first registered versions (``ADDED_FIELDS``) count only when they differ
        from their default. Versions registered before the bookkeeping was left out carry
        ``legacy_config_hash`` (``registry.registered_config`` accepts either).
        """
        d = self._hashed_dict()
        for key in BOOKKEEPING_FIELDS:  # "group.field", or a whole group / top-level key
            group, _, name = key.partition(".")
            if name:
                d[group].pop(name, None)
            else:
                d.pop(group, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def legacy_config_hash(self) -> str:
        """``config_hash`` as it was before it left out the bookkeeping: a hash of every field."""
        return hashlib.sha256(json.dumps(self._hashed_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def _hashed_dict(self) -> dict:
        d = self.to_dict()
        for key, default in ADDED_FIELDS.items():
            group, name = key.split(".")
            if d[group].get(name) == default:
                del d[group][name]
        return d

    def flat(self) -> dict:
        """``{"train.lr_g": 0.0002, ...}``: MLflow params."""
        out = {"name": self.name, "profile": self.profile}
        for group in ("data", "model", "train", "eval", "registry"):
            for k, v in dataclasses.asdict(getattr(self, group)).items():
                out[f"{group}.{k}"] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        groups = {
            "data": DataConfig,
            "model": ModelConfig,
            "train": TrainConfig,
            "eval": EvalConfig,
            "registry": RegistryConfig,
        }
        unknown = set(d) - set(groups) - {"name", "profile"}
        _check(not unknown, f"unknown config keys: {sorted(unknown)}")
        kwargs = {"name": d["name"], "profile": d["profile"]}
        for g, klass in groups.items():
            sub = dict(d.get(g, {}))
            bad = sorted(set(sub) - {f.name for f in fields(klass)})
            if bad:
                raise unknown_key_error(f"{g}.{bad[0]}")
            kwargs[g] = klass(**sub)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, s: str) -> PipelineConfig:
        return cls.from_dict(json.loads(s))


BOOKKEEPING_FIELDS = frozenset(
    {
        "profile",
        "train.log_every",
        "train.checkpoint_every",
        "train.snapshot_every",
        "train.launcher",
        "train.compile",
        "data.reference_split",
        "eval",
        "registry",
    }
)
"""What ``config_hash`` leaves out: how a run is logged, saved, launched, evaluated and promoted, not
what it trains (``eval``/``registry``: the whole group)."""
ADDED_FIELDS: dict[str, Any] = {
    "model.num_classes": 0,
    "model.n_blocks": 6,
    "data.source_b": "",
    "data.class_a": -1,
    "data.class_b": -1,
    "train.cycle_weight": 10.0,
    "train.identity_weight": 0.5,
    "train.pool_size": 50,
    "model.mapping_layers": 4,
    "train.r1_interval": 1,
    "train.style_mixing": 0.0,
    "data.task": "",
    "data.mask": "centre",
    "data.mask_seed": 0,
    "train.l1_weight": 100.0,
}
"""Fields added to the config later, with the default that leaves ``config_hash`` as it was before them."""


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
    # Measured at 28 px it trails the plain dcgan (README, "Generation quality"): the 3-conv
    # discriminator is too shallow once every layer is 1-Lipschitz.
    "sngan": {
        "model": {"arch": "dcgan", "d_norm": "spectral"},
        "train": {"loss": "hinge", "lr_g": 2e-4, "lr_d": 4e-4, "beta1": 0.5, "beta2": 0.999, "ema_decay": 0.999},
    },
    # Class-conditional DCGAN (issue 17): class-conditional BatchNorm in G, a projection discriminator
    # (Miyato & Koyama 2018) on the DCGAN D; otherwise the dcgan recipe (BCE, Adam 2e-4, β = (0.5, 0.999)).
    # 10 classes: Fashion-MNIST; another labelled source sets model.num_classes to its class count.
    "cdcgan": {"model": {"arch": "dcgan", "num_classes": 10}, "train": {"loss": "bce"}},
    # Unpaired image-to-image translation (issue 18), Zhu et al. 2017's recipe: least-squares GAN loss, cycle
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
    # profile's batch where it sets one, for throughput); EMA of G. The pairs come from Fashion-MNIST itself (ganforge.edit_data): sr: 14 → 28 px;
    # inpaint: a 14×14 centre hole (data.mask: random / mixed boxes).
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
    # StyleGAN2-style (issue 19; models/stylegan.py): mapping network, modulated/demodulated convs, noise
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
        # ~1,700 img/s on an idle 2-core CPU at 28 px: 10 epochs of the 60k images in ~6 min.
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
        # fp32: on an H200, bf16 autocast was measured slower than fp32 at this profile's batch and at
        # 64²/batch 64 (docs/gpu.md) — the steps are bound by kernel launches, not by matmul throughput,
        # so the casts cost more than bf16 saves. `--set train.amp=bf16` turns it on.
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
_PRESET_PROFILE: dict[tuple[str, str], dict] = {
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
    # cyclegan quality: 3,000 steps of batch 8 at ~1.2 s a step on one thread (~1 h; measured).
    ("cyclegan", "quality"): {
        "model": {"ngf": 32, "ndf": 64, "n_blocks": 6},
        "train": {"batch_size": 8, "epochs": 4, "checkpoint_every": 500, "log_every": 100, "snapshot_every": 0},
        "eval": {"n_samples": 1000, "kid_subset_size": 500},
    },
    ("cyclegan", "full"): {"train": {"batch_size": 8, "amp": "off"}},
    # stylegan: one step of these nets costs ~2× a dcgan quality step (README, "StyleGAN"), so its profiles are
    # narrower. local: ~10 min on 2 cores. quality: ~2.5 h of training on one thread at ~55–65 img/s.
    ("stylegan", "local"): {"model": {"ngf": 16, "ndf": 16}, "train": {"epochs": 1, "checkpoint_every": 200}},
    ("stylegan", "quality"): {"model": {"ngf": 16, "ndf": 16}, "train": {"epochs": 9, "snapshot_every": 3}},
}


def _merge(base: dict, over: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


CONFIG_GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "registry": RegistryConfig,
}
_TRUE, _FALSE, _NONE = ("true", "1"), ("false", "0"), ("none", "null")


def config_keys() -> list[str]:
    """Every overridable ``group.field`` key."""
    return [f"{g}.{f.name}" for g, klass in CONFIG_GROUPS.items() for f in fields(klass)]


def unknown_key_error(key: str) -> ConfigError:
    """A ConfigError for an unknown ``group.field`` key, with the closest known key when there is one."""
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known groups: {', '.join(CONFIG_GROUPS)}"
    return ConfigError(f"unknown config key {key!r}: {hint} (see the dataclasses in src/ganforge/config.py)")


def field_type(group: str, name: str) -> Any:
    """The annotated type of ``group.name`` (``int``, ``Optional[int]``, …); ConfigError if unknown."""
    klass = CONFIG_GROUPS.get(group)
    hints = typing.get_type_hints(klass) if klass is not None else {}
    if name not in hints:
        raise unknown_key_error(f"{group}.{name}")
    return hints[name]


def parse_value(key: str, raw: str, annotation: Any) -> Any:
    """``raw`` as a value of the field's type: bool accepts true/false/1/0 (any case), floats must be
    finite, ``Optional`` fields take none/null; anything else is a ConfigError naming the field."""
    text = raw.strip()
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X] and X | None
        if text.lower() in _NONE:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        optional = " or none"
    else:
        optional = ""
    if annotation is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{key}={raw!r}: {key} is a boolean, write true, false, 1 or 0{optional}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: {key} is an integer, e.g. {key}=3{optional}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{key}={raw!r}: {key} is a finite number, e.g. {key}=0.5{optional}")
        return value
    return raw


def parse_override(text: str) -> tuple[str, str, Any]:
    """``train.epochs=3`` → ("train", "epochs", 3), typed and checked against the field's type.

    Unknown keys get a "did you mean" suggestion; a value that does not fit the type is refused.
    """
    key, sep, raw = text.partition("=")
    group, dot, name = key.strip().partition(".")
    _check(bool(sep and dot and name), f"override {text!r} must look like group.field=value, e.g. train.epochs=3")
    return group, name, parse_value(f"{group}.{name}", raw, field_type(group, name))


def parse_overrides(texts: list[str]) -> dict:
    """``["train.epochs=3", "eval.n_samples=200"]`` → ``{"train": {"epochs": 3}, "eval": {"n_samples": 200}}``."""
    nested: dict = {}
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"override {text!r} must be a string group.field=value, e.g. train.epochs=3")
        g, k, v = parse_override(text)
        nested.setdefault(g, {})[k] = v
    return nested


def overrides_from_json(text: str) -> list[str]:
    """The pipelines' ``overrides`` parameter: a JSON list of ``group.field=value`` strings ("" = none)."""
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f'overrides {text!r} is not JSON ({e}); write a JSON list such as ["train.epochs=2", "eval.n_samples=200"]'
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'overrides {text!r} must be a JSON list of group.field=value strings, e.g. ["train.epochs=2"]'
        )
    parse_overrides(value)  # every key and type checked here, before any work
    return value


def build_config(name: str, profile: str = "local", overrides: dict | list | None = None) -> PipelineConfig:
    """Settle the run's config: preset, then profile, then per-preset profile tweaks, then overrides.

    ``overrides`` is ``{"train": {"epochs": 3}}`` or a list of ``"train.epochs=3"`` strings.
    """
    _one_of("pipeline", name, tuple(PRESETS))
    _one_of("profile", profile, tuple(PROFILES))
    d: dict = {"name": name, "profile": profile}
    for layer in (PRESETS[name], PROFILES[profile], _PRESET_PROFILE.get((name, profile), {})):
        d = _merge(d, layer)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    d = _merge(d, overrides or {})
    return PipelineConfig.from_dict(d)


def with_overrides(cfg: PipelineConfig, **groups: dict) -> PipelineConfig:
    """Return cfg with some fields of some groups replaced: ``with_overrides(cfg, train={"epochs": 2})``."""
    return replace(cfg, **{g: replace(getattr(cfg, g), **kv) for g, kv in groups.items()})
