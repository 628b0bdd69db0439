"""The optimizers refuse inputs that do not match instead of silently truncating them."""

import pytest
import torch

import glocal


def _problem():
    params = (torch.ones(3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    grads = tuple(torch.full_like(p, 0.5) for p in params)
    return params, grads


def test_adamw_refuses_a_state_of_the_wrong_length():
    params, grads = _problem()
    opt = glocal.optim.AdamW()
    state = opt.init(params)
    assert len(state) == 4
    with pytest.raises(ValueError, match="zip"):
        opt.update(params, state[:-1], grads, {}, 1)  # one second-moment buffer missing


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_gradients_must_match_parameters(name):
    params, grads = _problem()
    opt = glocal.optim.SGD(lr=0.1, momentum=0.9) if name == "sgd" else glocal.optim.AdamW()
    with pytest.raises(ValueError, match="zip"):
        opt.update(params, opt.init(params), grads[:1], {}, 1)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: glocal.optim.AdamW(lr=-1.0), "lr=-1.0 is out of range; expected lr >= 0"),
    (lambda: glocal.optim.AdamW(betas=(1.0, 0.9)), r"betas\[0\]=1.0 is out of range; expected 0 <= betas\[0\] < 1"),
    (lambda: glocal.optim.AdamW(betas=(1.5, 0.9)), r"betas\[0\]=1.5 is out of range"),
    (lambda: glocal.optim.AdamW(betas=(0.9, 1.0)), r"betas\[1\]=1.0 is out of range; expected 0 <= betas\[1\] < 1"),
    (lambda: glocal.optim.AdamW(betas=(0.9,)), r"betas=\(0.9,\): expected a pair \(beta1, beta2\)"),
    (lambda: glocal.optim.AdamW(eps=-1e-8), "eps=-1e-08 is out of range; expected eps >= 0"),
    (lambda: glocal.optim.AdamW(weight_decay=-0.1), "weight_decay=-0.1 is out of range; expected weight_decay >= 0"),
    (lambda: glocal.optim.SGD(lr=-1.0), "lr=-1.0 is out of range; expected lr >= 0"),
    (lambda: glocal.optim.SGD(momentum=1.0), "momentum=1.0 is out of range; expected 0 <= momentum < 1"),
    (lambda: glocal.optim.SGD(weight_decay=-1.0), "weight_decay=-1.0 is out of range; expected weight_decay >= 0"),
    (lambda: glocal.optim.SGD(dampening=1.5), "dampening=1.5 is out of range; expected 0 <= dampening < 1"),
    (lambda: glocal.optim.SGD(nesterov=True), r"nesterov=True requires momentum > 0 and dampening = 0"),
    (lambda: glocal.optim.SGD(nesterov=True, momentum=0.9, dampening=0.1), r"nesterov=True requires momentum > 0"),
])
def test_bad_constructor_arguments_name_the_argument_and_range(make, message):
    with pytest.raises(ValueError, match="^" + message):
        make()


def test_documented_defaults():
    """docs/api.md: SGD(lr=1e-3, momentum=0, weight_decay=0, nesterov=False, dampening=0),
    AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)."""
    assert glocal.optim.SGD().defaults() == {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "dampening": 0.0}
    assert not glocal.optim.SGD().nesterov
    assert glocal.optim.AdamW().defaults() == {"lr": 1e-3, "weight_decay": 1e-2, "beta1": 0.9, "beta2": 0.999,
                                               "eps": 1e-8}
    assert repr(glocal.optim.AdamW()) == "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"
    assert repr(glocal.optim.SGD()) == "SGD(lr=0.001, momentum=0, weight_decay=0, nesterov=False, dampening=0)"


def test_full_dampening_is_accepted_as_by_torch():
    """torch.optim.SGD accepts dampening = 1 (the momentum buffer then ignores new gradients after step 1)."""
    assert glocal.optim.SGD(lr=0.1, momentum=0.9, dampening=1.0).dampening == 1.0
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9, dampening=1.0)
