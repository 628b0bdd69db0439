"""Shared problems for the Tuner tests: a float64 tanh MLP and a strategy that returns scripted estimates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.strategies import WindowEstimate


def problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.3 * torch.randn(256, 3, generator=g, dtype=torch.float64)).argmax(1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 192, 32)]
    return model, batches, (x[192:], y[192:])


def tuner_for(strategy, clip_norm=1.0, hyper_lr=1.0, seed=0):
    model, batches, val = problem(seed)
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    hyper = torch.optim.SGD([space.raw], lr=hyper_lr)
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         strategy, hyper, val=val, clip_norm=clip_norm)
    return tuner, batches


class Scripted:
    """A strategy that returns, window after window, the hypergradients (and fallbacks) it is given."""

    name, record_every, mode = "scripted", 2, "forward"

    def __init__(self, window: int, estimates: list[tuple[list[float], bool]]) -> None:
        self.window = window
        self.estimates = list(estimates)

    def estimate(self, trajectory, window_end):
        values, fell_back = self.estimates.pop(0)
        value = torch.tensor(values, dtype=trajectory.dtype)
        return WindowEstimate(hypergradient=value, local=trajectory[-1], fell_back=fell_back,
                              reason="scripted" if fell_back else None)
