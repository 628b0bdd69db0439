"""The online loop: updates at window ends, skipping, clipping, and exact resume."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.strategies import WindowEstimate


def make_problem(seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, :3] + 0.3 * torch.randn(256, 3, generator=g)).argmax(1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 192, 32)]
    val = (x[192:], y[192:])
    return model, batches, val


def make_tuner(model, strategy, val, hyper_lr=0.05):
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    hyper = torch.optim.Adam([space.raw], lr=hyper_lr)
    return glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy, strategy,
                        hyper, val=val)


@pytest.mark.parametrize("strategy", [glocal.Local(window=5), glocal.Glocal(window=10, total_steps=40,
                                                                             record_every=2)])
def test_updates_happen_at_window_ends_and_model_trains_in_place(strategy):
    model, batches, val = make_problem()
    before = copy.deepcopy(model.state_dict())
    tuner = make_tuner(model, strategy, val)
    raw0 = tuner.space.raw.detach().clone()
    records = [tuner.step(batches[i % len(batches)]) for i in range(40)]
    assert len(tuner.history.windows) == 40 // strategy.window
    assert [w["end"] for w in tuner.history.windows] == list(range(strategy.window, 41, strategy.window))
    assert not torch.equal(tuner.space.raw.detach(), raw0)
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert [r["step"] for r in records if r["updated"]] == list(range(strategy.window, 41, strategy.window))


def test_fixed_never_changes_hyperparameters():
    model, batches, val = make_problem()
    tuner = make_tuner(model, glocal.Fixed(), val)
    raw0 = tuner.space.raw.detach().clone()
    for b in batches * 3:
        tuner.step(b)
    assert torch.equal(tuner.space.raw.detach(), raw0)
    assert tuner.history.windows == []


class _Broken:
    """A strategy whose estimate is not finite."""

    name, window, record_every, mode = "broken", 3, 3, "forward"

    def estimate(self, trajectory, window_end):
        return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], float("nan")), local=trajectory[-1])


def test_non_finite_estimate_is_skipped_and_counted():
    model, batches, val = make_problem()
    tuner = make_tuner(model, _Broken(), val)
    raw0 = tuner.space.raw.detach().clone()
    for b in batches:
        tuner.step(b)
    assert tuner.skipped_updates == 2
    assert torch.equal(tuner.space.raw.detach(), raw0)
    assert all(w["skipped"] for w in tuner.history.windows)


def test_hypergradient_norm_is_clipped():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    hyper = torch.optim.SGD([space.raw], lr=1.0)
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=3), hyper, val=val, clip_norm=1e-3)
    raw0 = space.raw.detach().clone()
    for b in batches[:3]:
        tuner.step(b)
    assert (space.raw.detach() - raw0).norm().item() == pytest.approx(1e-3, rel=1e-4)
    assert tuner.history.windows[0]["norm"] > 1e-3


@pytest.mark.parametrize("strategy_factory", [lambda: glocal.Local(window=4),
                                              lambda: glocal.Glocal(window=8, total_steps=30, record_every=2)])
def test_interrupted_and_resumed_run_equals_uninterrupted(strategy_factory):
    """Checkpoint mid-window (tangents, buffer, Adam state, dropout RNG) and resume in fresh objects."""
    model, batches, val = make_problem(dropout=0.2)
    stream = [batches[i % len(batches)] for i in range(30)]
    torch.manual_seed(123)
    tuner = make_tuner(model, strategy_factory(), val)
    for b in stream:
        tuner.step(b)
    expected_raw = tuner.space.raw.detach().clone()
    expected_params = copy.deepcopy(model.state_dict())

    model2, _, _ = make_problem(dropout=0.2)
    torch.manual_seed(123)
    tuner2 = make_tuner(model2, strategy_factory(), val)
    for b in stream[:13]:
        tuner2.step(b)
    checkpoint = copy.deepcopy(tuner2.state_dict())
    torch.manual_seed(999)  # the resumed run must not depend on the RNG state in between
    model3, _, _ = make_problem(seed=5, dropout=0.2)
    tuner3 = make_tuner(model3, strategy_factory(), val)
    tuner3.load_state_dict(checkpoint)
    for b in stream[13:]:
        tuner3.step(b)
    torch.testing.assert_close(tuner3.space.raw.detach(), expected_raw, rtol=0, atol=0)
    for k, v in expected_params.items():
        torch.testing.assert_close(model3.state_dict()[k], v, rtol=0, atol=0)
    assert len(tuner3.history.windows) == len(tuner.history.windows)


def test_callable_validation_and_missing_validation():
    model, batches, val = make_problem()
    tuner = make_tuner(model, glocal.Local(window=2), None)
    with pytest.raises(ValueError, match="val_batch"):
        tuner.step(batches[0])
    tuner.step(batches[0], val_batch=lambda: val)
    tuner.step(batches[1], val_batch=lambda: val)
    assert len(tuner.history.windows) == 1


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: glocal.Local(window=0), "window=0"),
        (lambda: glocal.Glocal(window=10, total_steps=5), "window=10"),
        (lambda: glocal.Glocal(window=10, total_steps=50, record_every=3), "record_every=3"),
        (lambda: glocal.Glocal(window=10, total_steps=50, record_every=10), "record_every=10"),
        (lambda: glocal.Global(outer_steps=0), "outer_steps=0"),
    ],
)
def test_bad_strategy_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_hyper_optimizer_must_own_raw():
    model, _, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    with pytest.raises(ValueError, match="hyper_optimizer"):
        glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=2),
                     torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), val=val)
    with pytest.raises(ValueError, match="clip_norm"):
        glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=2),
                     val=val, clip_norm=-1.0)


def test_global_retrains_from_the_same_start():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.01))
    result = glocal.Global(outer_steps=3).run(
        model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, lambda: iter(batches), 6, val,
        torch.optim.SGD([space.raw], lr=0.5),
    )
    assert result.inner_steps == 4 * 6
    assert len(result.outer) == 4 and result.outer[-1]["final_run"]
    # a learning rate far too small on this problem: the exact hypergradient says raise it
    assert space.to_dict()["lr"] > 0.01
    losses = [o["val_loss"] for o in result.outer[:-1]]
    assert losses[-1] < losses[0]


def test_factory_selects_the_compiled_engine_for_forward_mode_only():
    from glocal.hypergrad import Engine, ForwardEngine, PlainEngine, ReverseEngine, make_engine
    from glocal.hypergrad.compiled import CompiledForwardEngine

    model, _, _ = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    args = (model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy)
    assert type(make_engine("forward", *args, compile=True)) is CompiledForwardEngine
    assert type(make_engine("plain", *args, compile=True)) is PlainEngine
    assert type(make_engine("forward", *args)) is ForwardEngine
    assert type(make_engine("reverse", *args)) is ReverseEngine
    assert all(isinstance(make_engine(m, *args), Engine) for m in ("plain", "forward", "reverse"))
    with pytest.raises(ValueError, match="mode='sideways'"):
        make_engine("sideways", *args)


class _Reckless:
    """A strategy that asks for an absurd learning rate (log lr + 40) at its first window end."""

    name, window, record_every, mode = "reckless", 2, 2, "forward"

    def estimate(self, trajectory, window_end):
        return WindowEstimate(hypergradient=torch.full_like(trajectory[-1], -40.0), local=trajectory[-1])


def test_divergence_is_detected_and_never_corrupts_model_or_hyperparameters():
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05, high=1e30))  # bounds wide enough to let it diverge
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, _Reckless(),
                         torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None)
    tuner.step(batches[0])
    tuner.step(batches[1])  # window end: lr becomes 0.05 * e^40
    assert space.to_dict()["lr"] > 1e15
    good = copy.deepcopy(model.state_dict())  # the model when phi changed
    blown = tuner.step(batches[2])  # parameters explode (finite): the loss of this step is still fine
    assert not blown.get("diverged")
    assert max(v.abs().max().item() for v in model.state_dict().values()) > 1e10
    record = tuner.step(batches[3])  # the loss explodes: divergence
    assert record.get("diverged") and tuner.divergences == 1
    assert space.to_dict()["lr"] == pytest.approx(0.05)  # the update that caused it was reverted
    assert tuner.reverted_updates == 1 and tuner.history.windows[-1]["reverted"]
    for k, v in model.state_dict().items():  # model restored to its state when phi changed
        torch.testing.assert_close(v, good[k], rtol=0, atol=0)
    tuner.step(batches[4])  # training goes on from the last good state
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_non_finite_step_is_never_applied():
    """A NaN in the batch gives a NaN loss: the engine skips the step and keeps the model."""
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=3), val=val)
    tuner.step(batches[0])
    before = copy.deepcopy(model.state_dict())
    x, y = batches[1]
    bad = x.clone()
    bad[0, 0] = float("nan")
    record = tuner.step((bad, y))
    assert record.get("skipped") and tuner.skipped_steps == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    tuner.step(batches[2])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_divergence_after_resume_restores_the_model_like_an_uninterrupted_run():
    """The divergence snapshot is part of the checkpoint: a resumed run reverts phi AND the model."""
    def run(resume_at):
        model, batches, val = make_problem()
        space = glocal.HyperSpace(lr=glocal.Log(0.05, high=1e30))
        tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, _Reckless(),
                             torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None)
        for i in range(5):
            if i == resume_at:
                checkpoint = copy.deepcopy(tuner.state_dict())
                model, _, _ = make_problem(seed=7)
                space = glocal.HyperSpace(lr=glocal.Log(0.3, high=1e30))
                tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy,
                                     _Reckless(), torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None)
                tuner.load_state_dict(checkpoint)
            record = tuner.step(batches[i])
        return tuner, model, record

    expected_tuner, expected_model, _ = run(resume_at=None)
    tuner, model, _ = run(resume_at=3)  # checkpoint after the blow-up step, before the divergence
    assert tuner.divergences == expected_tuner.divergences == 1
    assert tuner.space.to_dict()["lr"] == pytest.approx(0.05)
    for k, v in expected_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


# -- reliability: bounds, faults before the first update, validated loading ---------------------------
def test_an_absurd_hyper_learning_rate_stops_at_the_bounds_and_says_so():
    """SGD on phi at lr 1e6: lr would collapse to 0 or blow up to 1e30; the bounds hold it, reported."""
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=3), torch.optim.SGD([space.raw], lr=1e6), val=val)
    for i in range(30):
        tuner.step(batches[i % len(batches)])
    low, high = space.bounds_of("lr")
    assert low <= space.to_dict()["lr"] <= high
    hits = [w["at_bound"] for w in tuner.history.windows if "at_bound" in w]
    assert hits and tuner.bound_hits == len(hits)
    assert all(set(h) <= {"lr", "momentum"} and set(h.values()) <= {"low", "high"} for h in hits)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("strategy", [glocal.Fixed(), glocal.Local(window=10)])
def test_non_finite_parameters_before_the_first_update_return_to_the_last_finite_state(strategy):
    """A real fault: NaN written into the weights (e.g. by a hook) before any phi update."""
    model, batches, val = make_problem()
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, strategy, val=val)
    start = copy.deepcopy(model.state_dict())
    for i in range(3):
        tuner.step(batches[i])
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    record = tuner.step(batches[3])
    assert record.get("skipped") and record.get("restored") and tuner.restored_faults == 1
    for k, v in model.state_dict().items():  # the last finite state: the start (no update yet)
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)
    for i in range(4, 40):
        tuner.step(batches[i % len(batches)])
    assert tuner.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if strategy.window:
        assert any(not w["skipped"] for w in tuner.history.windows)  # and phi is tuned again


def test_parameters_that_are_never_finite_stop_with_a_clear_error():
    model, batches, val = make_problem()
    with torch.no_grad():
        model[3].bias[1] = float("inf")
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=5), val=val)
    with pytest.raises(FloatingPointError, match="not finite before the first step"):
        tuner.step(batches[0])


def _everything(tuner):
    return {"model": copy.deepcopy(tuner.model.state_dict()), "raw": tuner.space.raw.detach().clone(),
            "steps": tuner.step_count, "engine": tuner.engine.state_dict(),
            "hyper": copy.deepcopy(tuner.hyper_optimizer.state_dict()), "history": tuner.history.state_dict()}


def _assert_same(a, b):
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    torch.testing.assert_close(a["raw"], b["raw"], rtol=0, atol=0)
    assert a["steps"] == b["steps"] and a["history"] == b["history"]
    for x, y in zip(a["engine"]["inner_state"], b["engine"]["inner_state"], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _corrupt(name, state):
    state = copy.deepcopy(state)
    if name == "model of another shape":
        state["model"]["3.weight"] = torch.zeros(4, 12)
    elif name == "model with a missing key":
        del state["model"]["3.bias"]
    elif name == "nan in phi":
        state["space"]["raw"][0] = float("nan")
    elif name == "phi of another space":
        state["space"]["raw"] = torch.zeros(3)
    elif name == "inner state of another optimizer":
        state["engine"]["inner_state"] = state["engine"]["inner_state"][:1]
    elif name == "tangents of another shape":
        state["engine"]["tangent_params"][0] = torch.zeros(1)
    elif name == "buffer of another shape":
        state["buffer"] = [torch.zeros(5)]
    elif name == "missing history":
        del state["history"]
    elif name == "bad rng":
        state["rng"] = torch.zeros(3)
    return state


@pytest.mark.parametrize("name", ["model of another shape", "model with a missing key", "nan in phi",
                                  "phi of another space", "inner state of another optimizer",
                                  "tangents of another shape", "buffer of another shape", "missing history",
                                  "bad rng"])
def test_load_state_dict_checks_everything_before_changing_anything(name):
    model, batches, val = make_problem()
    tuner = make_tuner(model, glocal.Local(window=4), val)
    for i in range(6):
        tuner.step(batches[i])
    checkpoint = tuner.state_dict()
    other_model, _, _ = make_problem(seed=5)
    other = make_tuner(other_model, glocal.Local(window=4), val)
    other.step(batches[0])
    before = _everything(other)
    with pytest.raises(ValueError, match="state"):
        other.load_state_dict(_corrupt(name, checkpoint))
    _assert_same(before, _everything(other))
    other.load_state_dict(checkpoint)  # the intact checkpoint still loads
    _assert_same(_everything(tuner), _everything(other))
