"""Resuming from a real checkpoint file gives the uninterrupted run bit for bit.

Each test runs a Tuner uninterrupted, and again with ``torch.save(tuner.state_dict(), path)`` at a
step, ``torch.load(path)`` (default arguments: ``weights_only=True``) into fresh objects, and the rest
of the run; phi, the model and the counters must be identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F
from tuner_helpers import problem

import glocal
from glocal.strategies import WindowEstimate


class Reckless:
    """Asks for lr x e^40 at the first window's end (training then diverges), then follows h_tau."""

    name, window, record_every, mode = "reckless", 2, 2, "forward"

    def estimate(self, trajectory, window_end):
        if window_end == self.window:
            return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], -40.0), local=trajectory[-1])
        return WindowEstimate(hypergradient=trajectory[-1], local=trajectory[-1])


def make(strategy, optimizer="sgd"):
    model, batches, val = problem()
    if optimizer == "adamw":
        inner = glocal.optim.AdamW(lr=0.01, weight_decay=0.01)
        space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.01), weight_decay=glocal.Log(0.01),
                                  beta1=glocal.Logit(0.9))
    else:
        inner = glocal.optim.SGD(momentum=0.5)
        space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05, high=1e30), momentum=glocal.Logit(0.5))
    hyper = torch.optim.Adam([space.raw], lr=0.05) if optimizer == "adamw" else torch.optim.SGD([space.raw], lr=1.0)
    tuner = glocal.Tuner(model, inner, space, F.cross_entropy, F.cross_entropy, strategy, hyper, val=val,
                         clip_norm=None)
    return tuner, [batches[i % len(batches)] for i in range(40)]


def compare(make_tuner, steps, stop, tmp_path):
    """Run uninterrupted and interrupted at ``stop`` (through a file); return both tuners."""
    reference, stream = make_tuner()
    for batch in stream[:steps]:
        reference.step(batch)
    first, _ = make_tuner()
    for batch in stream[:stop]:
        first.step(batch)
    path = tmp_path / "tuner.pt"
    torch.save(first.state_dict(), path)
    del first
    resumed, _ = make_tuner()
    for p in resumed.model.parameters():  # fresh objects in another state: everything must come from the file
        torch.nn.init.normal_(p)
    resumed.load_state_dict(torch.load(path))
    for batch in stream[stop:steps]:
        resumed.step(batch)
    assert resumed.step_count == reference.step_count == steps
    torch.testing.assert_close(resumed.space.raw.detach(), reference.space.raw.detach(), rtol=0, atol=0)
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for counter in ("divergences", "reverted_updates", "skipped_updates", "skipped_steps", "fallbacks"):
        assert getattr(resumed, counter) == getattr(reference, counter), counter
    assert json.dumps(resumed.history.windows) == json.dumps(reference.history.windows)  # NaN-aware
    assert resumed.history.train_loss == reference.history.train_loss
    return reference, resumed


@pytest.mark.parametrize("stop", [2, 3])
def test_resume_between_an_update_and_the_divergence_it_causes(stop, tmp_path):
    """The checkpoint holds what a divergence restores (phi before the update and the model at it)."""
    reference, resumed = compare(lambda: make(Reckless()), 8, stop, tmp_path)
    assert reference.divergences == 1 and reference.reverted_updates == 1
    assert max(p.abs().max().item() for p in resumed.model.parameters()) < 10


@pytest.mark.parametrize("stop", [5, 8, 13])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_forward_mode_resume_mid_window_from_a_file(optimizer, stop, tmp_path):
    reference, _ = compare(lambda: make(glocal.Glocal(window=8, total_steps=40, record_every=2), optimizer),
                           30, stop, tmp_path)
    assert len(reference.history.windows) == 3


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_reverse_mode_resume_at_a_window_end_from_a_file(optimizer, tmp_path):
    def make_reverse():
        return make(glocal.Glocal(window=6, total_steps=36, record_every=2, mode="reverse"), optimizer)

    reference, _ = compare(make_reverse, 24, 12, tmp_path)
    assert len(reference.history.windows) == 4


def test_reverse_mode_cannot_be_checkpointed_mid_window():
    tuner, stream = make(glocal.Local(window=4, mode="reverse"))
    for batch in stream[:5]:
        tuner.step(batch)
    with pytest.raises(RuntimeError, match="window's end"):
        tuner.state_dict()
    for batch in stream[5:8]:
        tuner.step(batch)
    assert tuner.state_dict()["step_count"] == 8
