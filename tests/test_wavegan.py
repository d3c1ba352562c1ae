import math

import numpy as np
import pytest
import torch
from torch import nn

from ganforge.config import build_config
from ganforge.models.wavegan import (
    PhaseShuffle,
    WaveGANDiscriminator,
    WaveGANGenerator,
    build_wavegan,
    shift_with_reflection,
)

torch.set_num_threads(1)
LENGTH = 16384


def test_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    generator, critic = WaveGANGenerator(nz=100, ngf=4), WaveGANDiscriminator(ndf=4)
    audio = generator(torch.randn(3, 100))
    assert audio.shape == (3, 1, LENGTH)
    assert audio.abs().max() <= 1.0
    assert critic(audio).shape == (3,)


def test_build_wavegan_from_the_preset_config():
    cfg = build_config("wavegan", "tiny")
    generator, critic = build_wavegan(cfg.model, cfg.data)
    assert generator.project.in_features == cfg.model.nz
    assert critic(generator(torch.randn(2, cfg.model.nz))).shape == (2,)


def test_paper_size_matches_the_reference_parameter_count():
    # d = 64: the reference TF graph has 19.1M generator and 17.4M discriminator parameters
    generator, critic = WaveGANGenerator(), WaveGANDiscriminator()
    assert sum(p.numel() for p in generator.parameters()) == 19_065_345
    assert sum(p.numel() for p in critic.parameters()) == 17_427_969


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_critic_has_no_batchnorm(norm):
    critic = WaveGANDiscriminator(ndf=4, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in critic.modules()) == (norm == "layer")


def test_critic_rejects_batchnorm():
    with pytest.raises(ValueError, match="not supported"):
        WaveGANDiscriminator(ndf=4, norm="batch")


def test_critic_is_per_sample_and_supports_the_gradient_penalty():
    torch.manual_seed(0)
    critic = WaveGANDiscriminator(ndf=4, phase_shuffle=2).eval()  # eval: no random shifts to compare
    x = torch.randn(3, 1, LENGTH, requires_grad=True)
    assert torch.allclose(critic(x)[1], critic(x[1:2])[0], atol=1e-5)
    critic.train()  # the penalty differentiates through phase shuffle twice
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean().backward()
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_glorot_uniform_init_and_zero_bias():
    generator = WaveGANGenerator(nz=100, ngf=4)
    w = generator.project.weight
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert all(torch.all(m.bias == 0) for m in generator.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose1d)))


def test_shift_with_reflection_matches_numpy_reflect_padding():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 10).repeat(5, 2, 1)
    shifts = torch.tensor([-2, -1, 0, 1, 2])
    out = shift_with_reflection(x, shifts, 2)
    for b, k in enumerate(shifts.tolist()):
        padded = np.pad(np.arange(10.0), 2, mode="reflect")
        expected = padded[2 - k : 2 - k + 10]
        assert np.array_equal(out[b, 0].numpy(), expected)
        assert np.array_equal(out[b, 1].numpy(), expected)
    assert out[4, 0, :3].tolist() == [2.0, 1.0, 0.0]  # shifted right by 2: the left edge is reflected
    assert out[0, 0, -3:].tolist() == [9.0, 8.0, 7.0]  # shifted left by 2: the right edge is reflected


def test_phase_shuffle_shifts_each_example_within_radius():
    torch.manual_seed(0)
    n, length = 2, 64
    shuffle = PhaseShuffle(n).train()
    ramp = torch.arange(length, dtype=torch.float32).view(1, 1, length).repeat(200, 3, 1)
    out = shuffle(ramp)
    assert out.shape == ramp.shape
    shifts = (ramp[:, 0, length // 2] - out[:, 0, length // 2]).long()  # interior: out[t] = t - k
    assert shifts.abs().max() <= n
    assert set(shifts.tolist()) == set(range(-n, n + 1))
    expected = shift_with_reflection(ramp, shifts, n)
    assert torch.equal(out, expected)
    assert torch.equal(out[:, 0], out[:, 2])  # one shift per example, shared by its channels


def test_phase_shuffle_is_identity_in_eval_or_with_zero_radius():
    x = torch.randn(4, 2, 32)
    assert torch.equal(PhaseShuffle(2).eval()(x), x)
    assert torch.equal(PhaseShuffle(0).train()(x), x)
