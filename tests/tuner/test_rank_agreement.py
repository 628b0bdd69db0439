"""The per-window agreement check of data-parallel runs gets phi and the model's own parameters.

``glocal.distributed.Reducer.check_agree`` compares them across ranks; a reducer for one rank (the
mean of one tensor is itself) records what the loop hands it, so this runs without a process group.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from tuner_helpers import tuner_for

import glocal


class OneRankReducer:
    def __init__(self) -> None:
        self.checks: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_start(self, model, raw) -> None:
        self.synced = (model, raw)

    def broadcast_(self, tensors, what: str = "tensors") -> None:  # from rank 0 to itself: nothing moves
        pass

    def check_agree(self, raw: torch.Tensor, params=()) -> None:
        self.checks.append((raw.detach().clone(), list(params)))


def test_tuner_checks_phi_and_the_model_parameters_at_every_window_end():
    reference, batches = tuner_for(glocal.Local(window=2))
    reducer = OneRankReducer()
    model, space = reference.model, reference.space
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=2), torch.optim.SGD([space.raw], lr=1.0), val=reference.val,
                         reducer=reducer)
    assert reducer.synced[0] is model and reducer.synced[1] is space.raw  # every rank starts from rank 0's
    for i in range(4):
        tuner.step(batches[i])
        if i % 2:
            raw, params = reducer.checks[-1]
            assert torch.equal(raw, space.raw.detach())  # phi after this window's update
            assert len(params) == len(list(model.parameters()))
            assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    assert len(reducer.checks) == 2


def test_drop_in_optimizer_checks_its_trainable_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    model[0].bias.requires_grad_(False)  # frozen: not part of what the ranks must agree on
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x[:, :3].argmax(1)
    reducer = OneRankReducer()
    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, tune=("lr",), strategy="local", window=2,
                           val_closure=lambda: F.cross_entropy(model(x[32:]), y[32:]), reducer=reducer)
    for i in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8]).backward(create_graph=True)
        opt.step()
    assert len(reducer.checks) == 2
    trainable = [p for p in model.parameters() if p.requires_grad]
    for _raw, params in reducer.checks:
        assert len(params) == len(trainable) == 3
        assert all(p is q for p, q in zip(params, trainable, strict=True))
    assert torch.equal(reducer.checks[-1][0], opt.space.raw.detach())


def test_an_engine_without_parameters_of_its_own_is_checked_on_phi_alone():
    """``OnlineLoop`` over a model engine (which keeps no ``params`` list) compares phi only."""
    from glocal.loop import OnlineLoop

    reference, batches = tuner_for(glocal.Local(window=1))
    reducer = OneRankReducer()
    space = reference.space
    tuner = glocal.Tuner(reference.model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=1), val=reference.val, reducer=reducer)
    loop = OnlineLoop(tuner.engine, space, glocal.Local(window=1), torch.optim.SGD([space.raw], lr=1.0))
    assert loop.run_step(batches[0], reference.val)["updated"]
    (raw, params), = reducer.checks
    assert params == [] and torch.equal(raw, space.raw.detach())
