import math

import torch

from ganforge.losses import d_loss, g_loss, gradient_penalty, r1_penalty


def test_bce_losses_on_known_logits():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])
    expected_d = (math.log(2) + math.log1p(math.exp(-2))) / 2 * 2
    assert math.isclose(d_loss("bce", real, fake).item(), expected_d, rel_tol=1e-6)
    # non-saturating: -log sigmoid(fake)
    assert math.isclose(g_loss("bce", fake).item(), (math.log(2) + math.log1p(math.exp(2))) / 2, rel_tol=1e-6)


def test_bce_is_finite_for_extreme_logits():
    # The seeds' Sigmoid + BCELoss gives log(0) here; the logits form stays finite.
    assert torch.isfinite(d_loss("bce", torch.tensor([-200.0]), torch.tensor([200.0])))
    assert torch.isfinite(g_loss("bce", torch.tensor([-200.0])))


def test_hinge_and_wgan_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert math.isclose(d_loss("hinge", real, fake).item(), (0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert math.isclose(d_loss("wgan-gp", real, fake).item(), -0.75 - 1.25)
    assert math.isclose(g_loss("wgan-gp", fake).item(), 0.75)


def test_gradient_penalty_known_case():
    # D(x) = w·x has gradient w everywhere: penalty = (‖w‖ - 1)².
    w = torch.tensor([3.0, 4.0])

    def critic(x):
        return (x.flatten(1) * w).sum(1)

    def unit(x):
        return (x.flatten(1) * (w / 5)).sum(1)

    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    assert math.isclose(gradient_penalty(critic, real, fake).item(), (5 - 1) ** 2, rel_tol=1e-6)
    assert gradient_penalty(unit, real, fake).item() < 1e-10


def test_gradient_penalty_is_differentiable_wrt_critic():
    lin = torch.nn.Linear(4, 1)
    gp = gradient_penalty(lambda x: lin(x).view(-1), torch.randn(8, 4), torch.randn(8, 4))
    gp.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_r1_penalty_known_case():
    x = torch.randn(6, 3, requires_grad=True)
    logits = (x * torch.tensor([1.0, 2.0, 2.0])).sum(1)
    assert math.isclose(r1_penalty(logits, x).item(), 9.0, rel_tol=1e-6)
