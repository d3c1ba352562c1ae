import pytest
import torch

from ganforge.config import PRESETS, ConfigError, build_config
from ganforge.models import DCGANDiscriminator, build_models


@pytest.mark.parametrize("preset", ["gan", "dcgan", "wgan-gp"])
@pytest.mark.parametrize("resolution", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_model_shapes(preset, resolution, channels):
    cfg = build_config(preset, "tiny", {"data": {"resolution": resolution, "channels": channels}})
    G, D = build_models(cfg.model, cfg.data)
    x = G(torch.randn(3, cfg.model.nz))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)


def test_seed_mlp_layer_sizes():
    cfg = build_config("gan", "tiny")
    G, D = build_models(cfg.model, cfg.data)
    g_linear = [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)]
    d_linear = [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert g_linear == [256, 512, 1024, 784]
    assert d_linear == [1024, 512, 256, 1]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in D.modules()), "D must return logits"


def test_dcgan_init_and_layers():
    cfg = build_config("dcgan", "local", {"data": {"resolution": 64}})
    G, D = build_models(cfg.model, cfg.data)
    convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 5 and convs[0].out_channels == 8 * cfg.model.ngf
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())


@pytest.mark.parametrize("norm", ["layer", "none", "spectral"])
def test_critic_has_no_batchnorm(norm):
    D = DCGANDiscriminator(8, 1, 28, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())


def test_wgan_gp_preset_critic_without_batchnorm_and_its_validation():
    cfg = build_config("wgan-gp", "tiny")
    _, D = build_models(cfg.model, cfg.data)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    with pytest.raises(ConfigError, match="BatchNorm"):
        build_config("wgan-gp", "tiny", {"model": {"d_norm": "batch"}})


def test_every_shipped_preset_and_profile_builds():
    for preset in PRESETS:
        for profile in ("tiny", "local", "full"):
            cfg = build_config(preset, profile)
            assert cfg.name == preset and cfg.profile == profile
            assert type(cfg).from_json(cfg.to_json()) == cfg


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="train.batch_size=30 must be divisible by nproc"):
        build_config("dcgan", "tiny", {"train": {"batch_size": 30, "nproc": 4}})
    with pytest.raises(ConfigError, match="data.resolution"):
        build_config("dcgan", "tiny", ["data.resolution=48"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch': did you mean 'train.epochs'\?"):
        build_config("dcgan", "tiny", {"train": {"epoch": 3}})
