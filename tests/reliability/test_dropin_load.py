"""The drop-in optimizers' load_state_dict: a state that does not fit raises and changes nothing."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal


def _trained(tune, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = x[:, :3].argmax(1)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4, tune=tune,
                           strategy="local", window=2, val_closure=lambda: F.cross_entropy(model(x), y))
    for i in range(0, 96, 32):
        opt.zero_grad()
        F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward(create_graph=True)
        opt.step()
    return opt


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def _corrupt(name, state):
    state = copy.deepcopy(state)
    if name == "nan in phi":
        state["glocal"]["space"]["raw"][0] = float("nan")
    elif name == "window buffer of another space":
        state["glocal"]["buffer"] = [torch.zeros(7)]
    elif name == "missing history":
        del state["glocal"]["history"]
    return state


@pytest.mark.parametrize("name", ["nan in phi", "window buffer of another space", "missing history",
                                  "another space"])
def test_a_bad_state_changes_nothing(name):
    opt = _trained(("lr", "weight_decay"))
    good = _snapshot(opt)
    other = _trained(("lr",), seed=3) if name == "another space" else _trained(("lr", "weight_decay"), seed=3)
    before = _snapshot(other)
    bad = good if name == "another space" else _corrupt(name, good)
    with pytest.raises(ValueError):
        other.load_state_dict(bad)
    after = _snapshot(other)
    torch.testing.assert_close(after["glocal"]["space"], before["glocal"]["space"], rtol=0, atol=0)
    assert after["param_groups"] == before["param_groups"]
    for key, value in before["state"].items():
        for k, v in value.items():
            torch.testing.assert_close(after["state"][key][k], v, rtol=0, atol=0)
