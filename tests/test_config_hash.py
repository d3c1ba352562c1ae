"""config_hash names what a run trains, not how it is logged, saved, launched, evaluated or promoted."""

from __future__ import annotations

import hashlib
import json

import pytest

from ganforge.config import ADDED_FIELDS, BOOKKEEPING_FIELDS, build_config


def _with(**groups):
    return build_config("dcgan", "tiny", groups)


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"log_every": 1}},
        {"train": {"checkpoint_every": 1}},
        {"train": {"snapshot_every": 0}},
        {"train": {"launcher": "trainjob"}},
        {"eval": {"n_samples": 100}},
        {"registry": {"promotion_margin": 5.0}},
    ],
)
def test_bookkeeping_leaves_the_hash_alone(change):
    assert _with(**change).config_hash() == _with().config_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"lr_g": 1e-3}},
        {"train": {"batch_size": 16}},
        {"train": {"seed": 1}},
        {"train": {"max_steps": 9}},
        {"train": {"nproc": 2}},
        {"model": {"ngf": 16}},
        {"data": {"limit": 256}},
    ],
)
def test_what_trains_the_model_changes_the_hash(change):
    assert _with(**change).config_hash() != _with().config_hash()


def test_the_profile_name_is_bookkeeping_and_the_legacy_hash_covers_every_field():
    cfg = _with()
    renamed = type(cfg).from_dict({**cfg.to_dict(), "profile": "local"})
    assert renamed.config_hash() == cfg.config_hash() and renamed.legacy_config_hash() != cfg.legacy_config_hash()
    d = cfg.to_dict()
    for key in ADDED_FIELDS:  # each at its default here
        group, name = key.split(".")
        del d[group][name]
    assert cfg.legacy_config_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    assert (
        "train.log_every" in BOOKKEEPING_FIELDS
        and _with(train={"log_every": 1}).legacy_config_hash() != cfg.legacy_config_hash()
    )
