"""One typed configuration per pipeline run.

A run's configuration is settled once at the entry point (preset + profile + a few
overrides), validated in ``__post_init__``, saved with the run (``config.json`` beside the
checkpoint, MLflow params) and passed to KFP components as JSON. Nothing downstream
re-reads the command line or the environment for training settings.

The typed groups live in ``config_groups``, presets and profiles in ``config_presets`` and the
``group.field=value`` parsing in ``config_overrides``; this module combines them and re-exports
their names, so ``from ganforge.config import X`` works for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .config_groups import (
    CONFIG_GROUPS,
    DEFAULT_IDX_DIR,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RegistryConfig,
    TrainConfig,
    _check,
    _one_of,
    config_keys,
    field_type,
    unknown_key_error,
)
from .config_overrides import overrides_from_json, parse_override, parse_overrides, parse_value
from .config_presets import PRESET_PROFILE, PRESETS, PROFILES, merge

__all__ = [
    "ADDED_FIELDS",
    "BOOKKEEPING_FIELDS",
    "CONFIG_GROUPS",
    "DEFAULT_IDX_DIR",
    "PRESETS",
    "PRESET_PROFILE",
    "PROFILES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PipelineConfig",
    "RegistryConfig",
    "TrainConfig",
    "build_config",
    "config_keys",
    "field_type",
    "overrides_from_json",
    "parse_override",
    "parse_overrides",
    "parse_value",
    "unknown_key_error",
    "with_overrides",
]


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
                self.train.nnodes == 1 and self.train.launcher == "local",
                "cyclegan trains on one node (train.nnodes=1, train.launcher='local')",
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
        groups = CONFIG_GROUPS
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


def build_config(name: str, profile: str = "local", overrides: dict | list | None = None) -> PipelineConfig:
    """Settle the run's config: preset, then profile, then per-preset profile tweaks, then overrides.

    ``overrides`` is ``{"train": {"epochs": 3}}`` or a list of ``"train.epochs=3"`` strings.
    """
    _one_of("pipeline", name, tuple(PRESETS))
    _one_of("profile", profile, tuple(PROFILES))
    d: dict = {"name": name, "profile": profile}
    for layer in (PRESETS[name], PROFILES[profile], PRESET_PROFILE.get((name, profile), {})):
        d = merge(d, layer)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    d = merge(d, overrides or {})
    return PipelineConfig.from_dict(d)


def with_overrides(cfg: PipelineConfig, **groups: dict) -> PipelineConfig:
    """Return cfg with some fields of some groups replaced: ``with_overrides(cfg, train={"epochs": 2})``."""
    return replace(cfg, **{g: replace(getattr(cfg, g), **kv) for g, kv in groups.items()})
