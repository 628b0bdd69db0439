"""Input handling of the engines: unknown hyperparameter names, loss modules."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.losses import ClassWeightedCrossEntropy


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)], (x[48:], y[48:])


@pytest.mark.parametrize(("optimizer", "name", "accepted"), [
    (glocal.optim.SGD(), "weight_decy", "lr, momentum, weight_decay, dampening"),
    (glocal.optim.SGD(), "learning_rate", "lr, momentum, weight_decay, dampening"),
    (glocal.optim.AdamW(), "betas", "lr, weight_decay, beta1, beta2, eps"),
])
def test_unknown_hyperparameter_names_are_an_error_listing_the_accepted_ones(optimizer, name, accepted):
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1), **{name: glocal.Log(0.5)})
    with pytest.raises(ValueError, match=f"{name}.*{accepted}"):
        glocal.Tuner(model, optimizer, space, F.cross_entropy, F.cross_entropy, glocal.Local(window=2), val=val)
    with pytest.raises(ValueError, match=name):
        glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy)


def test_entries_of_a_loss_that_takes_hparams_are_allowed():
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1),
                              class_weights=glocal.Log(torch.ones(3, dtype=torch.float64)))
    h = glocal.hypergradient(model, glocal.optim.SGD(), space, batches, val, F.cross_entropy,
                             train_loss=ClassWeightedCrossEntropy())
    assert h.shape == (4,) and torch.isfinite(h).all()


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_loss_modules_work_as_train_and_val_losses(mode):
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1))
    h_module = glocal.hypergradient(model, glocal.optim.SGD(), space, batches, val, nn.CrossEntropyLoss(),
                                    mode=mode)
    h_function = glocal.hypergradient(model, glocal.optim.SGD(), space, batches, val, F.cross_entropy, mode=mode)
    torch.testing.assert_close(h_module, h_function, rtol=1e-12, atol=0)
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, nn.CrossEntropyLoss(), nn.CrossEntropyLoss(),
                         glocal.Local(window=3, mode=mode), val=val)
    for b in batches:
        tuner.step(b)
    assert len(tuner.history.windows) == 1
