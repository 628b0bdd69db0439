"""The differentiable optimizers reproduce torch.optim exactly (float64, many steps)."""

import pytest
import torch
from torch import nn

import glocal
from glocal.optim.adamw import safe_sqrt


def _run_both(make_torch, ours, steps=60, tuned=()):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    reference = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    torch_opt = make_torch(reference)
    params = tuple(p.detach().clone() for p in model.parameters())
    state = ours.init(params, tuned=tuned)
    generator = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        grads = tuple(torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params)
        if step % 7 == 0:  # exact zero gradients exercise Adam's sqrt at zero
            grads = (torch.zeros_like(grads[0]), *grads[1:])
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        torch_opt.step()
        params, state = ours.update(params, state, grads, {}, step)
    for mine, theirs in zip(params, reference, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.1},
        {"lr": 0.05, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01},
        {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01, "dampening": 0.3},
        {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True},
        {"lr": 0.01, "momentum": 0.5, "weight_decay": 1.0},
    ],
)
def test_sgd_matches_torch(kwargs):
    _run_both(lambda ps: torch.optim.SGD(ps, **kwargs), glocal.optim.SGD(**kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 1e-2},
        {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.1},
        {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0},
    ],
)
def test_adamw_matches_torch(kwargs):
    _run_both(lambda ps: torch.optim.AdamW(ps, **kwargs), glocal.optim.AdamW(**kwargs))


def test_hyperparameter_overrides_constructor_value():
    """A value from the space (tensor) replaces the constant and gives the same update."""
    ours = glocal.optim.SGD(lr=0.5, momentum=0.1)
    params = (torch.ones(3, dtype=torch.float64),)
    grads = (torch.full((3,), 2.0, dtype=torch.float64),)
    state = ours.init(params)
    new, _ = ours.update(params, state, grads, {"lr": torch.tensor(0.25, dtype=torch.float64)}, 1)
    torch.testing.assert_close(new[0], torch.full((3,), 0.5, dtype=torch.float64))


def test_tuned_momentum_allocates_buffers_even_if_constant_is_zero():
    ours = glocal.optim.SGD(lr=0.1)
    assert ours.init((torch.ones(2),)) == ()
    assert len(ours.init((torch.ones(2),), tuned=("momentum",))) == 1


def test_safe_sqrt_has_finite_derivatives_at_zero():
    x = torch.tensor([0.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = safe_sqrt(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(g).all() and torch.isfinite(gg).all()
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(g.detach(), torch.tensor([0.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: glocal.optim.SGD(lr=-1), "lr=-1.*lr >= 0"),
        (lambda: glocal.optim.SGD(lr=0.1, momentum=1.0), "momentum"),
        (lambda: glocal.optim.SGD(lr=0.1, nesterov=True), "nesterov"),
        (lambda: glocal.optim.AdamW(lr=0.1, betas=(0.9, 1.5)), "betas\\[1\\]"),
        (lambda: glocal.optim.AdamW(lr=0.1, eps=-1), "eps"),
    ],
)
def test_bad_constructor_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
