"""Each preset's training recipe, pinned: one real step through the code's own step functions, checked
against the same losses written out here from their parts (the models' outputs on the same inputs).

A step is checked three ways: the losses it reports, the gradients it leaves on the updated network
(these carry the weights of the penalties and auxiliary losses that the reported adversarial loss does
not), and the parameters after the optimiser's first step (Adam's first step is lr·g/(|g|+ε), so this
pins which learning rate each network gets). Random draws inside a step (the gradient penalty's ε,
StyleGAN's noise inputs, WaveGAN's phase shuffle) are replayed by reseeding the global RNG and making
the same calls in the same order.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ganforge import cyclegan
from ganforge.checkpoint import read_checkpoint
from ganforge.config import build_config
from ganforge.train import (
    DistInfo,
    _Context,
    build_training_state,
    d_step,
    g_step,
    r1_due,
    style_mixing,
    train,
)

SEED = 123
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}  # summation order varies with the thread count
ADAM_EPS = 1e-8


def _state(preset: str, **train_overrides):
    cfg = build_config(preset, "tiny", {"train": {"batch_size": 4, **train_overrides}})
    G, D, _, opt_g, opt_d = build_training_state(cfg, torch.device("cpu"))
    return cfg, G, D, opt_g, opt_d, _Context(cfg, DistInfo())


def _batch(cfg, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(real samples in [-1, 1], latents): seeded, independent of the global RNG."""
    n = n or cfg.train.batch_size
    g = torch.Generator().manual_seed(7)
    d = cfg.data
    shape = (d.channels, d.audio_length) if d.kind == "audio" else (d.channels, d.resolution, d.resolution)
    return torch.rand(n, *shape, generator=g) * 2 - 1, torch.randn(n, cfg.model.nz, generator=g)


def _assert_step(after: torch.nn.Module, before: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    """``after``'s gradients are those of ``loss`` (computed on ``before``, its copy from before the step), and
    its parameters moved by Adam's first step from ``before``'s."""
    params = list(before.parameters())
    expected = torch.autograd.grad(loss, params, allow_unused=True)
    for (name, p), p0, g in zip(after.named_parameters(), params, expected, strict=True):
        g = torch.zeros_like(p0) if g is None else g
        got = torch.zeros_like(p0) if p.grad is None else p.grad
        assert_close(got, g, **GRAD_TOL, msg=lambda m, name=name: f"gradient of {name}: {m}")
        assert_close(p.detach(), p0.detach() - lr * g / (g.abs() + ADAM_EPS), rtol=1e-6, atol=lr * 1e-2)


def _nonsaturating_d(real_logits, fake_logits):
    return -F.logsigmoid(real_logits).mean() - F.logsigmoid(-fake_logits).mean()


def _nonsaturating_g(fake_logits):
    return -F.logsigmoid(fake_logits).mean()


def _gradient_penalty(D, real, fake):
    """E[(‖∇D(x̂)‖₂ − 1)²], x̂ = εx + (1−ε)x̃ with ε ~ U[0, 1] per sample drawn from the global RNG."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)))
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@pytest.mark.parametrize("preset", ["gan", "dcgan"])
def test_nonsaturating_step(preset):
    cfg, G, D, opt_g, opt_d, ctx = _state(preset)
    real, z = _batch(cfg)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = d_step(G, D, opt_d, real, z, ctx)
    with torch.no_grad():
        fake = G0(z)
    real_logits, fake_logits = D0(real), D0(fake)
    loss = _nonsaturating_d(real_logits, fake_logits)
    assert_close(out["loss_d"], loss.detach())
    assert_close(out["d_real"], real_logits.detach().mean())
    assert_close(out["d_fake"], fake_logits.detach().mean())
    assert "gp" not in out and "r1" not in out
    _assert_step(D, D0, loss, cfg.train.lr_d)

    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = g_step(G, D, opt_g, z, ctx)
    loss = _nonsaturating_g(D0(G0(z)))
    assert_close(out["loss_g"], loss.detach())
    _assert_step(G, G0, loss, cfg.train.lr_g)
    assert all(torch.equal(p, p0) for p, p0 in zip(D.parameters(), D0.parameters())), "the G step leaves D as it was"


@pytest.mark.parametrize("preset", ["wgan-gp", "wavegan"])
def test_wgan_gp_step(preset):
    """Critic loss D(fake) − D(real) plus gp_weight × the gradient penalty; G loss −D(G(z))."""
    cfg, G, D, opt_g, opt_d, ctx = _state(preset)
    assert cfg.train.gp_weight != 1  # so that a step ignoring the weight is told apart
    real, z = _batch(cfg)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    torch.manual_seed(SEED)
    out = d_step(G, D, opt_d, real, z, ctx)
    torch.manual_seed(SEED)
    with torch.no_grad():
        fake = G0(z)
    real_scores, fake_scores = D0(real), D0(fake)
    critic = fake_scores.mean() - real_scores.mean()
    gp = _gradient_penalty(D0, real, fake)
    assert_close(out["loss_d"], critic.detach())
    assert_close(out["gp"], gp.detach())
    _assert_step(D, D0, critic + cfg.train.gp_weight * gp, cfg.train.lr_d)

    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    torch.manual_seed(SEED)
    out = g_step(G, D, opt_g, z, ctx)
    torch.manual_seed(SEED)
    loss = -D0(G0(z)).mean()
    assert_close(out["loss_g"], loss.detach())
    _assert_step(G, G0, loss, cfg.train.lr_g)


def test_sngan_hinge_step():
    cfg, G, D, opt_g, opt_d, ctx = _state("sngan")
    real, z = _batch(cfg)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = d_step(G, D, opt_d, real, z, ctx)
    with torch.no_grad():
        fake = G0(z)
    loss = F.relu(1 - D0(real)).mean() + F.relu(1 + D0(fake)).mean()
    assert_close(out["loss_d"], loss.detach())
    _assert_step(D, D0, loss, cfg.train.lr_d)

    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = g_step(G, D, opt_g, z, ctx)
    loss = -D0(G0(z)).mean()
    assert_close(out["loss_g"], loss.detach())
    _assert_step(G, G0, loss, cfg.train.lr_g)


def test_cdcgan_step_conditions_both_networks_on_the_labels():
    cfg, G, D, opt_g, opt_d, ctx = _state("cdcgan")
    real, z = _batch(cfg)
    y_real, y_fake = torch.tensor([0, 3, 5, 9]), torch.tensor([1, 1, 8, 2])
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = d_step(G, D, opt_d, real, z, ctx, y_real=y_real, y_fake=y_fake)
    with torch.no_grad():
        fake = G0(z, y_fake)
    loss = _nonsaturating_d(D0(real, y_real), D0(fake, y_fake))
    assert_close(out["loss_d"], loss.detach())
    _assert_step(D, D0, loss, cfg.train.lr_d)

    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = g_step(G, D, opt_g, z, ctx, y=y_fake)
    loss = _nonsaturating_g(D0(G0(z, y_fake), y_fake))
    assert_close(out["loss_g"], loss.detach())
    _assert_step(G, G0, loss, cfg.train.lr_g)


@pytest.mark.parametrize("apply_r1", [True, False])
def test_stylegan_step_logistic_loss_lazy_r1_and_mixing(apply_r1):
    """Logistic (non-saturating) loss; on an R1 step, + γ/2 · r1_interval · E‖∇D(x)‖² (lazy R1: the interval's
    worth at once); the style-mixing arguments reach G in both steps (mixing made certain for the test)."""
    cfg, G, D, opt_g, opt_d, ctx = _state("stylegan", style_mixing=1.0)
    assert cfg.train.r1_interval > 1
    real, z = _batch(cfg)
    mixing = style_mixing(cfg, 0, 0, DistInfo(), G.num_ws)
    assert set(mixing) == {"mix_z", "mix_cutoff"}
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    torch.manual_seed(SEED)
    out = d_step(G, D, opt_d, real, z, ctx, apply_r1=apply_r1, g_kwargs=mixing)
    torch.manual_seed(SEED)
    with torch.no_grad():
        fake = G0(z, **mixing)
    x = real.clone().requires_grad_(True)
    real_logits = D0(x)
    loss = _nonsaturating_d(real_logits, D0(fake))
    assert_close(out["loss_d"], loss.detach())
    if apply_r1:
        (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
        r1 = grad.flatten(1).pow(2).sum(1).mean()
        assert_close(out["r1"], r1.detach())
        loss = loss + cfg.train.r1_gamma / 2 * cfg.train.r1_interval * r1
    else:
        assert "r1" not in out
    _assert_step(D, D0, loss, cfg.train.lr_d)

    mixing = style_mixing(cfg, 0, 1, DistInfo(), G.num_ws)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    torch.manual_seed(SEED)
    out = g_step(G, D, opt_g, z, ctx, g_kwargs=mixing)
    torch.manual_seed(SEED)
    loss = _nonsaturating_g(D0(G0(z, **mixing)))
    assert_close(out["loss_g"], loss.detach())
    _assert_step(G, G0, loss, cfg.train.lr_g)


def test_lazy_r1_falls_on_every_interval_th_discriminator_step():
    cfg = build_config("stylegan", "tiny")
    interval = cfg.train.r1_interval
    assert [s for s in range(3 * interval + 1) if r1_due(cfg, s, 0)] == [0, interval, 2 * interval, 3 * interval]
    cfg = build_config("stylegan", "tiny", {"train": {"n_critic": 3, "r1_interval": 4}})
    due = [(s, k) for s in range(4) for k in range(3) if r1_due(cfg, s, k)]  # D steps 0, 4, 8 of 12
    assert due == [(0, 0), (1, 1), (2, 2)]
    assert not any(r1_due(build_config("dcgan", "tiny"), s, 0) for s in range(4)), "no R1 without γ"


def test_style_mixing_probability_and_crossover():
    cfg = build_config("stylegan", "tiny")
    draws = [style_mixing(cfg, s, 0, DistInfo(), 6) for s in range(400)]
    mixed = [d for d in draws if d]
    assert abs(len(mixed) / len(draws) - cfg.train.style_mixing) < 0.05
    assert {d["mix_cutoff"] for d in mixed} == set(range(1, 6))
    assert all(d["mix_z"].shape == (cfg.train.batch_size, cfg.model.nz) for d in mixed)
    assert style_mixing(build_config("dcgan", "tiny"), 0, 0, DistInfo(), 6) == {}


def _l1(x, y):
    return (x - y).abs().mean()


def _lsgan(scores, target):
    return ((scores - target) ** 2).mean()


def test_cyclegan_steps():
    """G: LSGAN adversarial (both directions) + λ·cycle L1 + λ·identity_weight·identity L1; D: each domain's
    LSGAN loss on real and (pooled) fake, halved."""
    cfg = build_config("cyclegan", "tiny")
    tc = cfg.train
    assert tc.cycle_weight != 1 and tc.identity_weight not in (0, 1)
    m, opt_g, opt_d = cyclegan.build_cycle_state(cfg)
    a, b = _batch(cfg)[0], _batch(cfg, 2 * tc.batch_size)[0][tc.batch_size :]
    m0 = copy.deepcopy(m)
    losses, fake_a, fake_b = cyclegan.g_step(m, opt_g, a, b, cfg)
    fb, fa = m0.G_ab(a), m0.G_ba(b)
    adv = _lsgan(m0.D_b(fb), 1) + _lsgan(m0.D_a(fa), 1)
    cycle = _l1(m0.G_ba(fb), a) + _l1(m0.G_ab(fa), b)
    identity = _l1(m0.G_ab(b), b) + _l1(m0.G_ba(a), a)
    loss = adv + tc.cycle_weight * cycle + tc.cycle_weight * tc.identity_weight * identity
    for key, value in (("loss_g", loss), ("loss_g_adv", adv), ("cycle_l1", cycle), ("idt_l1", identity)):
        assert_close(losses[key], value.detach(), msg=lambda msg, key=key: f"{key}: {msg}")
    assert_close(fake_a, fa.detach())
    assert_close(fake_b, fb.detach())
    generators = torch.nn.ModuleList([m.G_ab, m.G_ba])
    _assert_step(generators, torch.nn.ModuleList([m0.G_ab, m0.G_ba]), loss, tc.lr_g)
    assert all(p.grad is None for p in [*m.D_a.parameters(), *m.D_b.parameters()])

    m0 = copy.deepcopy(m)
    out = cyclegan.d_step(m, opt_d, a, b, fake_a, fake_b)
    loss_a = 0.5 * (_lsgan(m0.D_a(a), 1) + _lsgan(m0.D_a(fake_a), 0))
    loss_b = 0.5 * (_lsgan(m0.D_b(b), 1) + _lsgan(m0.D_b(fake_b), 0))
    assert_close(out["loss_d_a"], loss_a.detach())
    assert_close(out["loss_d_b"], loss_b.detach())
    _assert_step(torch.nn.ModuleList([m.D_a, m.D_b]), torch.nn.ModuleList([m0.D_a, m0.D_b]), loss_a + loss_b, tc.lr_d)


def test_image_pool_keeps_the_last_fakes_and_swaps_half():
    """Until full, fakes pass through and are stored; then each is returned as is or, on a coin flip from the
    pool's generator, exchanged for a random stored one, which it replaces."""
    pool = cyclegan.ImagePool(3)
    first = torch.arange(2.0).view(2, 1)
    assert torch.equal(pool.query(first, torch.Generator().manual_seed(0)), first)
    later = torch.arange(10.0, 16.0).view(6, 1)
    got = pool.query(later, torch.Generator().manual_seed(1))
    stored, expected = [0.0, 1.0, 10.0], [10.0]
    gen = torch.Generator().manual_seed(1)
    for v in later[1:, 0].tolist():
        if torch.rand((), generator=gen) < 0.5:
            j = int(torch.randint(3, (), generator=gen))
            expected.append(stored[j])
            stored[j] = v
        else:
            expected.append(v)
    assert got[:, 0].tolist() == expected
    assert [float(x) for x in pool.state((1,))[:, 0]] == stored
    assert set(expected) - set(later[:, 0].tolist()), "this seed swaps at least one stored fake out"
    assert torch.equal(cyclegan.ImagePool(0).query(later, gen), later)


@pytest.fixture(scope="module")
def wgan_two_steps(fashion_train, tmp_path_factory):
    """Two wgan-gp steps through ``train`` with a checkpoint after each: (config, initial G, [checkpoint 1, 2])."""
    cfg = build_config("wgan-gp", "tiny", {"train": {"batch_size": 8, "max_steps": 2, "checkpoint_every": 1}})
    G0 = build_training_state(cfg, torch.device("cpu"))[0]
    ckpts = []
    train(
        cfg, fashion_train, tmp_path_factory.mktemp("wgan"), on_checkpoint=lambda s, p: ckpts.append(read_checkpoint(p))
    )
    return cfg, G0, ckpts


def test_train_takes_n_critic_critic_steps_per_generator_step(wgan_two_steps):
    cfg, _, ckpts = wgan_two_steps
    assert cfg.train.n_critic > 1
    for step, ckpt in enumerate(ckpts, 1):
        d_steps = {int(s["step"]) for s in ckpt["opt_D"]["state"].values()}
        g_steps = {int(s["step"]) for s in ckpt["opt_G"]["state"].values()}
        assert (d_steps, g_steps) == ({step * cfg.train.n_critic}, {step})


def test_ema_follows_the_generator_with_warm_up(wgan_two_steps):
    """G_ema ← d·G_ema + (1−d)·G after each step, d = min(ema_decay, (1+s)/(10+s)) at step s (from 0); buffers
    copied from G."""
    cfg, G0, (c1, c2) = wgan_two_steps
    names = {n for n, _ in G0.named_parameters()}
    ema = {n: p.detach() for n, p in G0.named_parameters()}
    for s, ckpt in enumerate((c1, c2)):
        d = min(cfg.train.ema_decay, (1 + s) / (10 + s))
        ema = {n: d * ema[n] + (1 - d) * ckpt["G"][n] for n in names}
        for n, value in ckpt["G_ema"].items():
            expected = ema[n] if n in names else ckpt["G"][n]
            assert_close(
                value, expected, rtol=1e-6, atol=1e-7, msg=lambda m, n=n, s=s: f"G_ema {n} at step {s + 1}: {m}"
            )
    assert any(not torch.equal(c2["G_ema"][n], c2["G"][n]) for n in names)
