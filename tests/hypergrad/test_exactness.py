"""Forward mode, reverse mode and central finite differences agree (float64, tanh models)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad import ForwardEngine

DT = torch.float64


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(DT)


class SmallCNN(nn.Module):
    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv1d(4, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3, 4)

    def forward(self, x):
        x = torch.tanh(self.norm(self.conv1(x.unsqueeze(1))))
        x = torch.tanh(self.conv2(x))
        return self.head(x.flatten(1))


def cnn(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(batch_norm).to(DT)


def data(steps: int = 12, batch: int = 16):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 4, generator=g, dtype=DT)

    def sample(n):
        x = torch.randn(n, 8, generator=g, dtype=DT)
        return x, (x @ w + 0.5 * torch.randn(n, 4, generator=g, dtype=DT)).argmax(1)

    return [sample(batch) for _ in range(steps)], sample(64)


def weighted_ce(output, target, hparams):
    weights = hparams["class_weights"]
    return (weights[target] * F.cross_entropy(output, target, reduction="none")).sum() / weights[target].sum()


def final_val_loss(model, optimizer, space, raw, batches, val, train_loss):
    """The training run re-executed from scratch with ``raw`` (reference for finite differences)."""
    space = copy.deepcopy(space)
    with torch.no_grad():
        space.raw.copy_(raw)
    engine = ForwardEngine(copy.deepcopy(model), optimizer, space, train_loss, F.cross_entropy)
    for b in batches:
        engine.step(b)
    return engine.validation_loss(val)


def finite_differences(model, optimizer, space, batches, val, train_loss, eps=1e-6):
    raw = space.raw.detach().clone()
    out = torch.zeros_like(raw)
    for i in range(raw.numel()):
        plus, minus = raw.clone(), raw.clone()
        plus[i] += eps
        minus[i] -= eps
        out[i] = (final_val_loss(model, optimizer, space, plus, batches, val, train_loss)
                  - final_val_loss(model, optimizer, space, minus, batches, val, train_loss)) / (2 * eps)
    return out


CASES = {
    "sgd": (glocal.optim.SGD(), dict(lr=glocal.Log(0.3))),
    "sgd-momentum-wd": (glocal.optim.SGD(lr=0.1, momentum=0.9),
                        dict(lr=glocal.Log(0.1), weight_decay=glocal.Log(1e-2), momentum=glocal.Logit(0.8))),
    "sgd-nesterov": (glocal.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                     dict(lr=glocal.Log(0.05), momentum=glocal.Logit(0.7), weight_decay=glocal.Log(0.05))),
    "adamw": (glocal.optim.AdamW(), dict(lr=glocal.Log(1e-2), weight_decay=glocal.Log(0.1))),
    "adamw-betas": (glocal.optim.AdamW(), dict(lr=glocal.Log(1e-2), beta1=glocal.Logit(0.8),
                                               beta2=glocal.Logit(0.99))),
}


#: tolerances at the agreement actually achieved (float64; measured values next to each use)
ROUND_OFF = 1e-13
FINITE_DIFFERENCES = 1e-8


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("make_model", [mlp, cnn], ids=["mlp", "cnn"])
def test_forward_reverse_and_finite_differences_agree(case, make_model):
    optimizer, entries = CASES[case]
    space = glocal.HyperSpace(dtype=DT, **entries)
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    batches, val = data()
    forward = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="forward")
    reverse = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="reverse")
    reference = finite_differences(model, optimizer, space, batches, val, F.cross_entropy)
    assert forward.shape == (len(space),) and forward.dtype == DT
    # the two modes compute the same derivative by different routes: equal to round-off (measured <= 2.3e-16)
    assert _relative_error(forward, reverse) < ROUND_OFF
    # central differences (eps 1e-6) are accurate to ~1e-9 here (measured 7.5e-11 .. 2.0e-9)
    assert _relative_error(forward, reference) < FINITE_DIFFERENCES
    assert _relative_error(reverse, reference) < FINITE_DIFFERENCES
    for name, tensor in model.state_dict().items():  # the model is left unchanged
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_hyperparameter_inside_the_training_loss(mode):
    """Per-class loss weights (and the learning rate) differentiated through the training loss."""
    space = glocal.HyperSpace(lr=glocal.Log(0.3), class_weights=glocal.Log(torch.tensor([1.0, 2.0, 0.5, 1.5])),
                              dtype=DT)
    optimizer = glocal.optim.SGD(momentum=0.5)
    model = mlp()
    batches, val = data(steps=8)
    h = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode=mode,
                             train_loss=weighted_ce)
    reference = finite_differences(model, optimizer, space, batches, val, weighted_ce)
    assert h.shape == (5,)
    assert _relative_error(h, reference) < FINITE_DIFFERENCES  # measured 3.8e-10 (both modes)
    assert h[1:].abs().max() > 1e-4  # the class-weight entries are genuinely non-zero


def test_batch_norm_model_trains_like_torch_and_modes_agree():
    """Buffers are threaded through: running statistics evolve as under torch.optim, both modes agree."""
    space = glocal.HyperSpace(lr=glocal.Log(0.1), momentum=glocal.Logit(0.9), dtype=DT)
    optimizer = glocal.optim.SGD(momentum=0.9)
    batches, val = data(steps=6)
    model = cnn(batch_norm=True)
    engine_model = copy.deepcopy(model)
    engine = ForwardEngine(engine_model, optimizer, space, F.cross_entropy, F.cross_entropy)
    reference = copy.deepcopy(model)
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        engine.step((x, y))
        torch_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        torch_opt.step()
    for (name, mine), theirs in zip(engine_model.state_dict().items(), reference.state_dict().values(),
                                    strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-15, msg=name)
    forward = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="forward")
    reverse = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="reverse")
    assert _relative_error(forward, reverse) < ROUND_OFF


def test_tangents_reset_measures_effect_from_that_step():
    """After reset, h equals the hypergradient of a run that starts there with fixed history."""
    space = glocal.HyperSpace(lr=glocal.Log(0.2), dtype=DT)
    optimizer = glocal.optim.SGD()
    batches, val = data(steps=10)
    model = mlp()
    engine = ForwardEngine(model, optimizer, space, F.cross_entropy)
    for b in batches[:5]:
        engine.step(b)
    engine.reset_tangents()
    _, h0 = engine.hypergradient(val)
    assert h0.abs().max() == 0
    snapshot = copy.deepcopy(model)
    for b in batches[5:]:
        engine.step(b)
    _, h = engine.hypergradient(val)
    expected = glocal.hypergradient(snapshot, optimizer, space, batches[5:], val, F.cross_entropy)
    assert _relative_error(h, expected) < ROUND_OFF


def test_bad_mode_and_empty_batches():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), dtype=DT)
    batches, val = data(steps=1)
    with pytest.raises(ValueError, match="mode"):
        glocal.hypergradient(mlp(), glocal.optim.SGD(), space, batches, val, F.cross_entropy, mode="sideways")
    with pytest.raises(ValueError, match="train_batches"):
        glocal.hypergradient(mlp(), glocal.optim.SGD(), space, [], val, F.cross_entropy)
    with pytest.raises(TypeError, match="optimizer"):
        glocal.hypergradient(mlp(), torch.optim.SGD, space, batches, val, F.cross_entropy)
