"""``ParamEngine`` (the drop-in optimizers' engine) on its own, in float64, against torch.optim.

Its step, the data-parallel hook (what is averaged, under which name, and when), skipped steps,
the divergence snapshot and ``restore``, and the checkpoint round trip are checked at the engine
level: through ``GlocalSGD`` some of them are hidden (the optimizer keeps the inner state in
torch.optim's per-parameter state, and restores only after a divergence).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reducers import HalfAll
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad.params_engine import CREATE_GRAPH_MESSAGE, ParamEngine
from glocal.optim import SGD, AdamW

DT = torch.float64


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT))
               for _ in range(4)]
    val = (torch.randn(16, 3, generator=g, dtype=DT), torch.randn(16, 2, generator=g, dtype=DT))
    return model, batches, val


def make(model, optimizer=None, *, tuned=True, reducer=None, lr=0.1, groups=None, entries=None):
    params = list(model.parameters())
    space = glocal.HyperSpace(dtype=DT, **(entries or {"lr": glocal.Log(lr)}))
    names = {n: n for n in space.names}
    return ParamEngine(params, groups or [0] * len(params), optimizer or SGD(), space, names, tuned=tuned,
                       model=model, reducer=reducer)


def backward(model, batch, create_graph=True) -> float:
    for p in model.parameters():
        p.grad = None
    loss = F.mse_loss(model(batch[0]), batch[1])
    loss.backward(create_graph=create_graph)
    return float(loss.detach())


def val_closure(model, val):
    return lambda: F.mse_loss(model(val[0]), val[1])


@pytest.mark.parametrize("tuned", [False, True], ids=["fixed", "tuned"])
def test_steps_follow_torch_sgd_and_return_the_given_loss(tuned):
    model, batches, _ = model_and_data()
    reference = copy.deepcopy(model)
    engine = make(model, SGD(momentum=0.9), tuned=tuned)
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for batch in batches:
        loss = backward(model, batch, create_graph=tuned)
        assert engine.step(loss) == loss
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
    backward(model, batches[0], create_graph=tuned)
    assert math.isnan(engine.step(None))  # the loss unknown: NaN (the step is still taken)
    assert engine.step_count == len(batches) + 1 and engine.skipped_steps == 0
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))


def test_a_fixed_adamw_engine_follows_torch_adamw():
    """The untuned path flattens both AdamW state groups and passes the step count (bias correction)."""
    model, batches, _ = model_and_data()
    reference = copy.deepcopy(model)
    engine = make(model, AdamW(lr=0.01, weight_decay=0.1), tuned=False, lr=0.01)
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1)
    for batch in batches:
        engine.step(backward(model, batch, create_graph=False))
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("tuned", [False, True], ids=["fixed", "tuned"])
def test_per_group_constants_follow_torch_sgd_in_float64(tuned):
    """Untuned values that differ between groups (here weight decay 0.1 / 0.01) apply per element, in
    the parameters' dtype (a float32 table would be off by ~1e-9)."""
    model, batches, _ = model_and_data()
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    groups = [0, 0, 1, 1]
    engine = make(model, SGD(weight_decay=0.1), tuned=tuned, groups=groups,
                  entries={"lr": glocal.Log(torch.tensor([0.1, 0.1], dtype=DT))})
    ref_params = list(reference.parameters())
    torch_opt = torch.optim.SGD([{"params": ref_params[:2], "weight_decay": 0.1},
                                 {"params": ref_params[2:], "weight_decay": 0.01}], lr=0.1)
    for batch in batches:
        engine.constants = {"weight_decay": [0.1, 0.01], "momentum": [0.0, 0.0]}
        engine.step(backward(model, batch, create_graph=tuned))
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_a_tuned_momentum_gets_buffers_even_when_the_inner_default_has_none():
    """Momentum buffers exist when momentum is tuned, though the inner optimizer's own momentum is 0."""
    model, batches, _ = model_and_data()
    reference = copy.deepcopy(model)
    engine = make(model, SGD(), entries={"lr": glocal.Log(0.1), "momentum": glocal.Logit(0.5)})
    assert len(engine.state) == len(list(model.parameters()))
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    for batch in batches:
        engine.step(backward(model, batch))
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_a_parameter_without_gradient_counts_as_zero_gradient():
    model, batches, _ = model_and_data()
    extra = nn.Parameter(torch.ones(3, dtype=DT))  # never in the loss: its .grad stays None
    params = [*model.parameters(), extra]
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    engine = ParamEngine(params, [0] * len(params), SGD(), space, {"lr": "lr"}, tuned=True)
    engine.step(backward(model, batches[0]))
    engine.step(backward(model, batches[1]))
    assert torch.equal(extra.detach(), torch.ones(3, dtype=DT))


def test_without_a_graph_the_tuned_step_asks_for_create_graph():
    model, batches, _ = model_and_data()
    engine = make(model)
    backward(model, batches[0], create_graph=False)
    with pytest.raises(RuntimeError) as info:
        engine.step(None)
    assert str(info.value) == CREATE_GRAPH_MESSAGE


def test_a_non_finite_step_is_skipped_counted_and_training_continues():
    model, batches, val = model_and_data()
    engine = make(model, SGD(momentum=0.9))
    engine.step(backward(model, batches[0]))
    engine.step(backward(model, batches[1]))
    before = [p.detach().clone() for p in model.parameters()]
    state = [s.clone() for s in engine.state]
    tangents = [t.clone() for t in engine.tangents.tangent_params]
    backward(model, batches[2])
    assert engine.step(math.inf) == math.inf  # a non-finite loss, finite parameters: skipped
    assert engine.skipped_steps == 1
    backward(model, batches[2])
    for p in model.parameters():
        p.grad = p.grad * math.nan  # keeps the gradient's graph
    assert math.isnan(engine.step(None))  # non-finite parameters: skipped
    assert engine.skipped_steps == 2
    assert engine.step_count == 2
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(torch.equal(s, b) for s, b in zip(engine.state, state, strict=True))
    assert all(torch.equal(t, b) for t, b in zip(engine.tangents.tangent_params, tangents, strict=True))
    engine.step(backward(model, batches[2]))  # the next step runs from the kept tangents
    assert engine.step_count == 3 and engine.parameters_finite()
    _, h = engine.hypergradient(val_closure(model, val))
    assert bool(torch.isfinite(h).all()) and bool(h.ne(0).all())


def test_the_reducer_averages_the_gradient_and_the_given_loss_of_a_fixed_engine():
    model, batches, _ = model_and_data()
    reference = copy.deepcopy(model)
    reducer = HalfAll()
    engine = make(model, tuned=False, reducer=reducer, lr=0.2)
    loss = backward(model, batches[0], create_graph=False)
    assert engine.step(loss) == pytest.approx(0.5 * loss, rel=1e-15)
    assert reducer.what == ["training gradient", "training loss"]
    backward(model, batches[0], create_graph=False)
    assert math.isnan(engine.step(None))  # an unknown loss is not averaged (no collective for it)
    assert reducer.what == ["training gradient", "training loss", "training gradient"]
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1)  # half the gradient at twice the lr
    for _ in range(2):
        torch_opt.zero_grad()
        F.mse_loss(reference(batches[0][0]), batches[0][1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_the_reducer_averages_gradient_tangents_validation_loss_and_h():
    """Half the gradient (and its tangents) at 2 lr trains as 1 lr without a reducer; the validation
    loss and h come out halved."""
    model, batches, val = model_and_data()
    reference = copy.deepcopy(model)
    reducer = HalfAll()
    engine = make(model, SGD(momentum=0.5), reducer=reducer, lr=0.2)
    plain = make(reference, SGD(momentum=0.5), lr=0.1)
    for batch in batches:
        assert engine.step(backward(model, batch)) == pytest.approx(0.5 * plain.step(backward(reference, batch)),
                                                                    rel=1e-15)
    assert reducer.what == ["training gradient and its tangents", "training loss"] * len(batches)
    value, h = engine.hypergradient(val_closure(model, val))
    value_ref, h_ref = plain.hypergradient(val_closure(reference, val))
    assert reducer.what[-1] == "validation loss and hypergradient"
    assert value == pytest.approx(0.5 * value_ref, rel=1e-14)
    torch.testing.assert_close(h, 0.5 * h_ref, rtol=1e-12, atol=0)
    assert bool(h_ref.ne(0).all())


def test_the_validation_closure_is_checked():
    model, batches, val = model_and_data()
    engine = make(model)
    engine.step(backward(model, batches[0]))
    with pytest.raises(TypeError, match="val_closure: expected it to return a scalar loss tensor, got float"):
        engine.hypergradient(lambda: 1.0)
    with pytest.raises(TypeError, match="got Tensor"):
        engine.hypergradient(lambda: torch.ones(2, dtype=DT))
    message = (r"val_closure: the loss it returned has no graph to the parameters \(computed under "
               r"torch.no_grad\(\) or detached\?\); glocal differentiates it")
    with pytest.raises(RuntimeError, match=message):
        engine.hypergradient(lambda: val_closure(model, val)().detach())


def test_a_validation_loss_that_ignores_some_parameters_gives_them_zero_gradient():
    model, batches, val = model_and_data()
    engine = make(model)
    for batch in batches[:2]:
        engine.step(backward(model, batch))
    first = model[0]
    features = (torch.tanh(first(val[0])) ** 2).mean()  # only the first layer's weight and bias
    value, h = engine.hypergradient(lambda: (torch.tanh(first(val[0])) ** 2).mean())
    assert value == pytest.approx(float(features.detach()), rel=1e-15)
    z = engine.tangents.tangent_params
    grads = torch.autograd.grad((torch.tanh(first(val[0])) ** 2).mean(), [first.weight, first.bias])
    expected = sum((zi.reshape(1, -1) @ g.reshape(-1)) for zi, g in zip(z[:2], grads, strict=True))
    torch.testing.assert_close(h, expected.reshape(1), rtol=1e-13, atol=0)


def test_an_untuned_engine_reports_the_validation_loss_and_a_zero_hypergradient():
    model, batches, val = model_and_data()
    engine = make(model, tuned=False)
    engine.step(backward(model, batches[0], create_graph=False))
    value, h = engine.hypergradient(val_closure(model, val))
    assert value == pytest.approx(float(val_closure(model, val)().detach()), rel=1e-15)
    assert torch.equal(h, torch.zeros(1, dtype=DT)) and not h.requires_grad


def _run_with_snapshot(engine, model, batches):
    engine.step(backward(model, batches[0]))
    engine.snapshot()
    saved = ([p.detach().clone() for p in model.parameters()], [s.clone() for s in engine.state],
             engine.step_count)
    for batch in batches[1:3]:
        engine.step(backward(model, batch))
    return saved


def test_restore_returns_to_the_snapshot_once_and_resets_the_tangents():
    model, batches, _ = model_and_data()
    engine = make(model, SGD(momentum=0.9))
    assert engine.restore() is False  # no snapshot yet
    params, state, step = _run_with_snapshot(engine, model, batches)
    assert not engine.tangents.zero
    assert engine.restore() is True
    assert all(torch.equal(p.detach(), v) for p, v in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(s, v) for s, v in zip(engine.state, state, strict=True))
    assert engine.step_count == step == 1
    assert engine.tangents.zero and all(not t.any() for t in engine.tangents.tangent_params)
    assert engine.restore() is False  # the snapshot is used once


def test_state_dict_round_trip_keeps_the_snapshot_the_tangents_and_the_counters():
    model, batches, val = model_and_data()
    engine = make(model, SGD(momentum=0.9))
    params, state, _ = _run_with_snapshot(engine, model, batches)
    backward(model, batches[0])
    engine.step(math.inf)  # one skipped step
    saved = engine.state_dict()
    torch.save(saved, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    other_model = copy.deepcopy(model)
    other = make(other_model, SGD(momentum=0.9))
    other.load_state_dict(loaded)
    assert other.step_count == engine.step_count == 3 and other.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(other.state, engine.state, strict=True))
    for a, b in zip(other.tangents.tangent_params + other.tangents.tangent_state,
                    engine.tangents.tangent_params + engine.tangents.tangent_state, strict=True):
        assert torch.equal(a, b)
    assert not other.tangents.zero
    h_other = other.hypergradient(val_closure(other_model, val))[1]
    assert h_other.equal(engine.hypergradient(val_closure(model, val))[1])
    for batch in batches[3:]:  # both continue identically
        engine.step(backward(model, batch))
        other.step(backward(other_model, batch))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other_model.parameters(), strict=True))
    assert other.restore() is True  # the snapshot came along (copied: the checkpoint does not alias it)
    assert all(torch.equal(p.detach(), v) for p, v in zip(other_model.parameters(), params, strict=True))
    assert all(torch.equal(s, v) for s, v in zip(other.state, state, strict=True))
    assert other.step_count == 1


def test_a_checkpoint_without_tangents_resets_them_and_none_snapshot_stays_none():
    model, batches, _ = model_and_data()
    engine = make(model)
    engine.step(backward(model, batches[0]))
    engine.step(backward(model, batches[1]))
    saved = engine.state_dict()
    assert saved["snapshot"] is None
    del saved["tangent_params"], saved["tangent_state"]
    engine.load_state_dict(saved)
    assert engine.tangents.zero is True and engine.restore() is False
    engine.begin_window()
    engine.load_state_dict(engine.state_dict())  # saved at a window's start: all-zero tangents
    assert engine.tangents.zero is True  # so the next step skips the double backward
    untuned = make(copy.deepcopy(model), tuned=False)
    assert "tangent_params" not in untuned.state_dict()


def test_a_space_entry_under_another_name_drives_the_named_hyperparameter():
    """``names`` maps the optimizer's name to the space's entry: "eta" tunes SGD's lr."""
    model, batches, val = model_and_data()
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    named = ParamEngine(params, [0] * len(params), SGD(), glocal.HyperSpace(dtype=DT, eta=glocal.Log(0.1)),
                        {"lr": "eta"}, tuned=True)
    plain = make(reference)
    for batch in batches[:3]:
        named.step(backward(model, batch))
        plain.step(backward(reference, batch))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    h = named.hypergradient(val_closure(model, val))[1]
    assert torch.equal(h, plain.hypergradient(val_closure(reference, val))[1]) and bool(h.ne(0).all())


def test_h_comes_in_the_space_dtype_for_float32_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))  # float32
    params = list(model.parameters())
    engine = ParamEngine(params, [0] * len(params), SGD(), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)),
                         {"lr": "lr"}, tuned=True)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(2):
        for p in params:
            p.grad = None
        F.mse_loss(model(x), y).backward(create_graph=True)
        engine.step(None)
    _, h = engine.hypergradient(lambda: F.mse_loss(model(x), y))
    assert h.dtype == DT and bool(h.ne(0).all())
