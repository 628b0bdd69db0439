"""One step of the online loop at its edges: Fixed needs no validation data, one-step windows behave as
windows (tangents restart, recovery, divergence), each step's record, and the divergence threshold."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F
from tuner_helpers import problem, tuner_for

import glocal
from glocal.strategies import WindowEstimate


class Reckless:
    """Asks for an absurd learning rate (log lr + 40) at every window's end."""

    name, record_every, mode = "reckless", 1, "forward"

    def __init__(self, window: int) -> None:
        self.window = window

    def estimate(self, trajectory, window_end):
        return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], -40.0), local=trajectory[-1])


def test_fixed_needs_no_validation_data_and_keeps_no_window_buffer():
    model, batches, _ = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Fixed())
    records = [tuner.step(batches[i]) for i in range(3)]
    assert [r["step"] for r in records] == [1, 2, 3] and not any(r["updated"] for r in records)
    assert tuner.history.val_loss == [] and tuner.history.windows == []
    assert tuner.state_dict()["buffer"] == []


@pytest.mark.parametrize("window", [1, 2])
def test_a_tuning_strategy_needs_validation_data(window):
    model, batches, _ = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=window))
    with pytest.raises(ValueError, match=r"^val_batch: required \(or pass val= to Tuner\) when the strategy tunes$"):
        tuner.step(batches[0])


def test_one_step_windows_restart_their_tangents():
    """window=1, plain SGD: h = d L_val(theta_{t+1}) / d log lr
    = -lr <grad L_val(theta_{t+1}), grad L_train(theta_t)>, from this step only."""
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=1),
                         torch.optim.SGD([space.raw], lr=0.0), val=val)

    def grad(params, batch):
        out = functional_call(model, params, (batch[0],))
        return torch.autograd.grad(F.cross_entropy(out, batch[1]), list(params.values()))

    for i in range(3):
        before = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
        record = tuner.step(batches[i])
        after = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
        g_train, g_val = grad(before, batches[i]), grad(after, val)
        expected = -0.05 * sum((a * b).sum() for a, b in zip(g_val, g_train, strict=True))
        assert record["updated"] and record["val_loss"] == tuner.history.val_loss[-1]
        assert tuner.history.windows[-1]["local"][0] == pytest.approx(float(expected), rel=1e-9)


def test_one_step_windows_are_reverted_after_a_skipped_step():
    tuner, batches = tuner_for(glocal.Local(window=1))
    raw0 = tuner.space.raw.detach().clone()
    assert tuner.step(batches[0])["updated"] and not torch.equal(tuner.space.raw, raw0)
    x, y = batches[1]
    assert tuner.step((torch.full_like(x, math.nan), y)).get("skipped")
    assert tuner.reverted_updates == 1 and torch.equal(tuner.space.raw, raw0)


def test_one_step_windows_are_judged_for_divergence_and_each_divergence_counts():
    tuner, batches = tuner_for(Reckless(1), clip_norm=None)
    tuner.space.raw_high.fill_(math.inf)  # let the learning rate blow up
    records = [tuner.step(batches[i]) for i in range(4)]  # lr 0.05 e^40 after step 1: the weights blow up
    assert [bool(r.get("diverged")) for r in records] == [False, False, True, True]
    assert tuner.divergences == 2


def test_a_skipped_step_is_recorded_as_skipped():
    seen = []
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.listeners.append(seen.append)
    x, y = batches[0]
    tuner.step((torch.full_like(x, math.nan), y))
    (skipped,) = [r for r in seen if r.kind == "step"]
    assert skipped.step == 1 and skipped.scalars == {"train/skipped": 1.0}  # a NaN loss is not logged


def _at_reference(factor):
    """Train 30 steps (15 windows), then one step on a batch far harder than the last window's mean;
    returns (record of that step, the reference loss, that step's loss with divergence detection off)."""
    tuner, batches = tuner_for(glocal.Local(window=2))
    for i in range(30):
        tuner.step(batches[i % len(batches)])
    state = tuner.state_dict()
    x, y = batches[0]
    hard = (x * 5, (y + 1) % 3)
    tuner.divergence_factor = None
    loss = tuner.step(hard)["train_loss"]
    tuner.load_state_dict(state)
    tuner.divergence_factor = factor(loss, state["reference_loss"])
    return tuner, tuner.step(hard), state["reference_loss"], loss


def test_divergence_is_a_loss_strictly_above_the_factor_times_the_reference():
    def exactly(loss, reference):  # a factor with factor * reference == loss in floating point
        factor = loss / reference
        while factor * reference != loss:
            factor = math.nextafter(factor, math.inf if factor * reference < loss else -math.inf)
        return factor

    tuner, record, reference, loss = _at_reference(exactly)
    assert tuner.divergence_factor * reference == loss and tuner.divergence_factor > 1
    assert not record.get("diverged") and tuner.divergences == 0
    # just below: divergence, also when the reference loss is below 1 (it is not rounded up to 1)
    tuner, record, reference, loss = _at_reference(lambda loss, reference: loss / reference * (1 - 1e-9))
    assert reference < 1 < tuner.divergence_factor
    assert record.get("diverged") and tuner.divergences == 1


def test_weights_not_finite_before_the_first_step_are_reported_with_what_to_check():
    tuner, batches = tuner_for(glocal.Local(window=2))
    with torch.no_grad():
        tuner.model[2].bias[0] = math.inf
    with pytest.raises(FloatingPointError, match=r"^the model's parameters are not finite before the first step: "
                       r"there is no finite state to train from \(check the initialisation or the loaded weights\)$"):
        tuner.step(batches[0])


def test_construction_arguments_at_their_edges():
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))
    args = (model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy)
    with pytest.raises(TypeError,
                       match=r"^strategy: expected a glocal strategy \(Fixed, Local, Glocal\), got 'local'$"):
        glocal.Tuner(*args, "local", val=val)
    with pytest.raises(ValueError, match=r"^hyper_optimizer: it must optimize space.raw, e.g. "
                       r"torch.optim.Adam\(\[space.raw\]\)$"):
        glocal.Tuner(*args, glocal.Local(window=1), torch.optim.Adam([torch.zeros(1, requires_grad=True)]), val=val)
    assert glocal.Tuner(*args, glocal.Local(window=1), val=val, divergence_factor=1.5).divergence_factor == 1.5
    # the loop's own default is the Tuner's
    from glocal.loop import OnlineLoop

    tuner = glocal.Tuner(*args, glocal.Local(window=1), val=val)
    assert tuner.divergence_factor == OnlineLoop(tuner.engine, space, glocal.Fixed()).divergence_factor == 100.0
    # a one-step window gets the default hyper-optimizer too, and tunes with it
    raw0 = space.raw.detach().clone()
    assert isinstance(tuner.hyper_optimizer, glocal.RelativeSGD)
    assert tuner.step(batches[0])["updated"] and not torch.equal(space.raw, raw0)


def test_the_drop_in_hyper_lr_is_the_first_relative_step():
    """RelativeSGD (the default) moves raw by exactly hyper_lr on the first update, against the local sign."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    _, batches, (xv, yv) = problem()
    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, tune=("lr",), strategy="local", window=2, hyper_lr=0.25,
                           val_closure=lambda: F.cross_entropy(model(xv), yv))
    raw0 = opt.space.raw.detach().clone()
    for x, y in batches[:2]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
    local = torch.tensor(opt.history.windows[0]["local"], dtype=torch.float64)
    torch.testing.assert_close(opt.space.raw.detach() - raw0, -0.25 * torch.sign(local), rtol=1e-12, atol=0)


def test_a_step_under_float16_autocast_is_refused_before_anything_changes():
    """Tuner.step moves an enclosing autocast region to the model's forward passes, and checks its dtype first."""
    from glocal.amp import FLOAT16_REFUSED

    tuner, batches = tuner_for(glocal.Local(window=2))
    with pytest.raises(ValueError, match=f"^{re.escape(FLOAT16_REFUSED)}$"), torch.autocast("cpu", dtype=torch.float16):
        tuner.step(batches[0])
    assert tuner.step_count == 0


def test_the_tuner_validates_with_val_loss_and_selects_the_compiled_engine():
    model, batches, val = problem()
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))

    def half_ce(output, target):
        return 0.5 * F.cross_entropy(output, target)

    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, half_ce, glocal.Local(window=1),
                         torch.optim.SGD([space.raw], lr=0.0), val=val)
    record = tuner.step(batches[0])
    with torch.no_grad():
        assert record["val_loss"] == pytest.approx(float(half_ce(model(val[0]), val[1])), rel=1e-12)
    from glocal.hypergrad.compiled import CompiledForwardEngine

    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05))
    compiled = glocal.Tuner(problem()[0], glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy,
                            glocal.Local(window=1), val=val, compile=True)
    assert type(compiled.engine) is CompiledForwardEngine  # compiled lazily: nothing runs here


def test_a_step_under_bfloat16_autocast_runs_the_model_under_it_and_restores_it():
    tuner, batches = tuner_for(glocal.Local(window=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        record = tuner.step(batches[0])
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert math.isfinite(record["train_loss"]) and tuner.engine.fmodel.autocast_dtype is None
