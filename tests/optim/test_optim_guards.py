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
