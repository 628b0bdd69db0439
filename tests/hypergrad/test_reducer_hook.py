"""The engines average the training gradient and loss through the reducer (data-parallel hook).

A reducer is any callable tensor -> its mean over the ranks; ``half`` is the mean over two ranks when
the other rank contributes zeros. Training with it must equal training at half the learning rate,
with half the loss reported: the hook replaces both, in every engine.
"""

from __future__ import annotations

import copy

import pytest
import torch
from reducers import HalfAll
from torch import nn
from torch.nn import functional as F

import glocal


def half(tensor: torch.Tensor) -> torch.Tensor:
    return 0.5 * tensor


def run(strategy_factory, lr, reducer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = x[:, :3].argmax(1)
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(lr))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, strategy_factory(),
                         torch.optim.SGD([space.raw], lr=0.0), val=(x[48:], y[48:]), reducer=reducer)
    losses = [tuner.step((x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]))["train_loss"] for i in range(3)]
    return model, losses


@pytest.mark.parametrize(("strategy", "label"), [(glocal.Fixed, "training gradient and loss"),
                                               (lambda: glocal.Local(window=3), "training gradient and its tangents")],
                         ids=["plain", "forward"])
def test_the_reducer_mean_replaces_the_gradient_and_the_loss(strategy, label):
    reduced, reduced_losses = run(strategy, 0.2, half)
    reference, losses = run(strategy, 0.1, None)
    for p, q in zip(reduced.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert reduced_losses == pytest.approx([0.5 * v for v in losses], rel=1e-12)
    batched = HalfAll()
    in_one, in_one_losses = run(strategy, 0.2, batched)
    assert in_one_losses == reduced_losses
    assert all(torch.equal(p, q) for p, q in zip(in_one.parameters(), reduced.parameters(), strict=True))
    assert label in batched.what  # what the collective carries, named in a distributed error


def test_a_fixed_adamw_run_follows_torch_adamw():
    """The plain engine counts steps from 1 (AdamW's bias correction), as torch.optim.AdamW does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g, dtype=torch.float64)
    y = x[:, :3].argmax(1)
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.01))
    tuner = glocal.Tuner(model, glocal.optim.AdamW(weight_decay=0.1), space, F.cross_entropy, F.cross_entropy,
                         glocal.Fixed())
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1)
    for i in range(3):
        batch = (x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
        tuner.step(batch)
        torch_opt.zero_grad()
        F.cross_entropy(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
