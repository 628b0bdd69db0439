"""Global.run against a replay: each outer step is a fresh run from the same start, and phi moves by
the recorded hypergradient through the hyper-optimizer the caller gave (or one default one)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal import defaults
from glocal.strategies import Fixed

STEPS = 5


def half_ce(output, target):
    """A validation loss unlike the training loss: Global must use the one it was given."""
    return 0.5 * F.cross_entropy(output, target)


def make_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 4, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.3 * torch.randn(96, 3, generator=g, dtype=torch.float64)).argmax(1)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    return model, (lambda: iter(batches * 2)), (x[64:], y[64:])


def space_at(raw):
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    with torch.no_grad():
        space.raw.copy_(raw)
    return space


def train_fixed(model, lr, batches, rng):
    """The reference: a plain run of STEPS steps with lr held fixed, from ``model``'s state and ``rng``."""
    torch.set_rng_state(rng)
    space = glocal.HyperSpace(lr=glocal.Log(lr), dtype=torch.float64)
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, half_ce, Fixed())
    iterator = batches()
    for _ in range(STEPS):
        tuner.step(next(iterator))
    return model


def run_global(hyper_lr=0.5, clip_norm=1e-3, outer_steps=2):
    model, batches, val = make_problem()
    initial, rng = copy.deepcopy(model), torch.get_rng_state()
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    hyper = torch.optim.SGD([space.raw], lr=hyper_lr)
    calls = []
    result = glocal.Global(outer_steps=outer_steps).run(
        model, glocal.optim.SGD(), space, F.cross_entropy, half_ce, batches, STEPS, val, hyper,
        clip_norm=clip_norm, on_step=lambda outer, record: calls.append((outer, record)))
    return model, initial, rng, batches, val, space, result, calls


def test_each_outer_step_retrains_from_the_start_and_phi_follows_the_clipped_hypergradient():
    model, initial, rng, batches, val, space, result, calls = run_global()
    assert [o["outer_step"] for o in result.outer] == [0, 1, 2]
    assert [o["final_run"] for o in result.outer] == [False, False, True]
    assert result.inner_steps == 3 * STEPS and result.skipped_updates == 0
    # on_step sees every step of every run, with the outer step it belongs to
    assert [outer for outer, _ in calls] == [0] * STEPS + [1] * STEPS + [2] * STEPS
    assert [record["step"] for _, record in calls] == list(range(1, STEPS + 1)) * 3

    raw = torch.log(torch.tensor([0.01], dtype=torch.float64))
    for entry in result.outer[:-1]:
        assert entry["hparams_used"] == pytest.approx(space_at(raw).to_dict(), rel=1e-12)
        # the recorded validation loss: that of a plain run from the initial model, rng and this phi
        reference = train_fixed(copy.deepcopy(initial), entry["hparams_used"]["lr"], batches, rng)
        reference.eval()
        with torch.no_grad():
            assert entry["val_loss"] == pytest.approx(float(half_ce(reference(val[0]), val[1])), rel=1e-9)
        g = torch.tensor(entry["hypergradient"], dtype=torch.float64)
        assert g.norm() > 1e-3  # so the clip applies: the step is hyper_lr * clip_norm along -g
        raw = raw - 0.5 * 1e-3 * g / g.norm()
    # the final run uses the final phi (not updated during it), and the model is what it trains
    assert result.outer[-1]["hparams_used"] == pytest.approx(space_at(raw).to_dict(), rel=1e-12)
    assert space.to_dict() == result.outer[-1]["hparams_used"]
    reference = train_fixed(copy.deepcopy(initial), space.to_dict()["lr"], batches, rng)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_without_a_hyper_optimizer_one_default_one_keeps_its_state_across_outer_steps():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    result = glocal.Global(outer_steps=3).run(model, glocal.optim.SGD(), space, F.cross_entropy, half_ce,
                                              batches, STEPS, val)
    replay = space_at(torch.log(torch.tensor([0.01], dtype=torch.float64)))
    hyper = defaults.hyper_optimizer(replay.raw)
    for entry, after in zip(result.outer[:-1], result.outer[1:], strict=True):
        g = torch.tensor(entry["hypergradient"], dtype=torch.float64)
        hyper.zero_grad()
        replay.raw.grad = g.clone()
        hyper.set_reference(replay.raw, g)
        hyper.step()
        assert after["hparams_used"] == pytest.approx(replay.to_dict(), rel=1e-12)
    # a fresh RelativeSGD per outer step would move raw by exactly lr = 0.1 each time: make sure the
    # hypergradients differ enough in size for the running RMS to tell the two apart
    steps = torch.diff(torch.log(torch.tensor([o["hparams_used"]["lr"] for o in result.outer])))
    assert (steps.abs() - defaults.HYPER_LR).abs().max() > 1e-3


def test_non_finite_hypergradients_are_skipped_in_every_outer_step_and_counted():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    result = glocal.Global(outer_steps=2).run(
        model, glocal.optim.SGD(), space, F.cross_entropy, lambda out, y: F.cross_entropy(out, y) * float("nan"),
        batches, STEPS, val, torch.optim.SGD([space.raw], lr=0.5))
    assert result.skipped_updates == 2  # one window per outer step, the final run has none
    assert space.to_dict()["lr"] == pytest.approx(0.01, rel=1e-12)


def test_total_steps_must_be_positive():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    with pytest.raises(ValueError, match="total_steps=0"):
        glocal.Global(outer_steps=1).run(model, glocal.optim.SGD(), space, F.cross_entropy, half_ce, batches, 0,
                                         val)


def test_mode_and_compile_reach_the_engine(monkeypatch):
    """compile=True with mode='reverse': the factory gets both (it compiles forward mode only)."""
    import glocal.tuner

    real = glocal.tuner.make_engine
    seen = []

    def spy(mode, *args, compile=False, **kwargs):
        seen.append((mode, compile))
        assert mode in ("reverse", "plain"), mode  # stop before a forward engine would compile
        return real(mode, *args, compile=compile, **kwargs)

    monkeypatch.setattr(glocal.tuner, "make_engine", spy)
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.01), dtype=torch.float64)
    glocal.Global(outer_steps=1, mode="reverse").run(model, glocal.optim.SGD(), space, F.cross_entropy, half_ce,
                                                     batches, STEPS, val, compile=True)
    assert seen == [("reverse", True), ("plain", True)]
