"""The model-driven engines (plain, forward, reverse) in detail, float64 against torch references.

Train/eval modes (batch norm: train statistics in a step, running statistics for validation), the
argument names in bad-batch errors, the data-parallel hook on the validation side, the dtype of h,
parameters that do not reach a loss, and the checkpoint of skipped steps and the snapshot.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from reducers import HalfAll
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad import ForwardEngine, PlainEngine, ReverseEngine, make_engine
from glocal.hypergrad.tangents import reduce_all

DT = torch.float64
MODES = ("plain", "forward", "reverse")


class HalfEach:
    """A plain callable reducer (no ``mean_all``)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 0.5 * tensor


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).to(DT)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)


def data(steps: int = 3):
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT))
               for _ in range(steps)]
    return batches, (torch.randn(16, 3, generator=g, dtype=DT), torch.randn(16, 2, generator=g, dtype=DT))


def space(lr: float = 0.1) -> glocal.HyperSpace:
    return glocal.HyperSpace(dtype=DT, lr=glocal.Log(lr))


def test_reduce_all_uses_one_collective_when_offered_else_one_call_per_tensor():
    tensors = (torch.ones(2, dtype=DT), torch.full((3,), 4.0, dtype=DT))
    assert reduce_all(None, tensors) is tensors
    batched = HalfAll()
    out = reduce_all(batched, tensors)
    assert batched.what == ["tensors"]  # the default name
    reduce_all(batched, tensors, "the thing")
    assert batched.what == ["tensors", "the thing"]
    each = HalfEach()
    out_each = reduce_all(each, tensors, "ignored")
    assert each.calls == 2
    for a, b, t in zip(out, out_each, tensors, strict=True):
        assert torch.equal(a, 0.5 * t) and torch.equal(b, 0.5 * t)


@pytest.mark.parametrize("mode", MODES)
def test_a_step_trains_in_train_mode_and_validation_uses_eval_mode(mode):
    """Batch statistics and running-statistics updates in the step (as a torch.optim step in train
    mode); validation with the running statistics (as the model in eval mode)."""
    model = bn_model()
    reference = copy.deepcopy(model)
    batches, val = data()
    engine = make_engine(mode, model, glocal.optim.SGD(momentum=0.5), space(), F.mse_loss)
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    for batch in batches:
        engine.step(batch)
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for (name, mine), theirs in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-15, msg=name)
    reference.eval()
    with torch.no_grad():
        expected = float(F.mse_loss(reference(val[0]), val[1]))
    value, h = engine.hypergradient(val)
    assert value == pytest.approx(expected, rel=1e-13)
    assert engine.validation_loss(val) == pytest.approx(expected, rel=1e-13)
    assert model.training  # the model's own mode is left as it was
    if mode == "plain":
        assert torch.equal(h, torch.zeros(1, dtype=DT)) and not h.requires_grad


@pytest.mark.parametrize("mode", MODES)
def test_bad_batches_name_the_argument(mode):
    engine = make_engine(mode, mlp(), glocal.optim.SGD(), space(), F.mse_loss)
    batches, val = data(1)
    with pytest.raises(ValueError, match=r"^train_batch: expected a tuple \(inputs, targets, \.\.\.\), got Tensor$"):
        engine.step(batches[0][0])
    with pytest.raises(ValueError, match=r"^train_batch: expected a tuple \(inputs, targets, \.\.\.\), got tuple$"):
        engine.step((batches[0][0],))  # no targets
    with pytest.raises(ValueError, match=r"^train_batch: .*, got int$"):
        engine.step(3)
    engine.step(batches[0])
    with pytest.raises(ValueError, match=r"^val_batch: expected a tuple \(inputs, targets, \.\.\.\), got Tensor$"):
        engine.hypergradient(val[0])


def test_the_forward_engine_averages_the_loss_and_the_validation_side():
    """Half the gradient at 2 lr trains as 1 lr without a reducer; the training loss, the
    validation loss and h come out halved (the validation loss kept in float64)."""
    batches, val = data()
    model = mlp()
    reducer = HalfAll()
    engine = ForwardEngine(model, glocal.optim.SGD(momentum=0.5), space(0.2), F.mse_loss, reducer=reducer)
    plain = ForwardEngine(copy.deepcopy(model), glocal.optim.SGD(momentum=0.5), space(0.1), F.mse_loss)
    for batch in batches:
        assert engine.step(batch) == pytest.approx(0.5 * plain.step(batch), rel=1e-15)
    assert reducer.what == ["training loss", "training gradient and its tangents"] * len(batches)
    value, h = engine.hypergradient(val)
    value_ref, h_ref = plain.hypergradient(val)
    assert reducer.what[-1] == "validation loss and hypergradient"
    assert value == pytest.approx(0.5 * value_ref, rel=1e-15)
    torch.testing.assert_close(h, 0.5 * h_ref, rtol=1e-12, atol=0)
    assert h_ref.abs().min() > 0


def test_the_reverse_engine_averages_only_the_validation_loss_and_h():
    batches, val = data()
    model = mlp()
    reducer = HalfEach()
    engine = ReverseEngine(model, glocal.optim.SGD(), space(), F.mse_loss, reducer=reducer)
    plain = ReverseEngine(copy.deepcopy(model), glocal.optim.SGD(), space(), F.mse_loss)
    value, h = engine.hypergradient(val)  # at the window's start: h is zero, only the loss is averaged
    assert reducer.calls == 1 and torch.equal(h, torch.zeros(1, dtype=DT)) and not h.requires_grad
    assert value == pytest.approx(0.5 * plain.hypergradient(val)[0], rel=1e-15)
    engine.step(batches[0])
    plain.step(batches[0])
    value, h = engine.hypergradient(val)  # after one step h is already non-zero
    value_ref, h_ref = plain.hypergradient(val)
    assert reducer.calls == 3
    assert h_ref.abs().min() > 0
    assert value == pytest.approx(0.5 * value_ref, rel=1e-15)
    torch.testing.assert_close(h, 0.5 * h_ref, rtol=1e-14, atol=0)
    for p, q in zip(engine.fmodel.parameters(), plain.fmodel.parameters(), strict=True):
        assert torch.equal(p, q)  # the training gradient is not averaged in reverse mode


def test_a_plain_engine_reports_the_validation_loss_and_a_zero_hypergradient():
    model = mlp()
    batches, val = data(1)
    engine = PlainEngine(model, glocal.optim.SGD(), space(), F.mse_loss)
    engine.step(batches[0])
    model.eval()
    with torch.no_grad():
        expected = float(F.mse_loss(model(val[0]), val[1]))
    value, h = engine.hypergradient(val)
    assert value == pytest.approx(expected, rel=1e-15)
    assert torch.equal(h, torch.zeros(1, dtype=DT)) and not h.requires_grad


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_h_comes_in_the_space_dtype_when_the_model_is_float32(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))  # float32
    batches, val = data(2)
    batches = [(x.float(), y.float()) for x, y in batches]
    h = glocal.hypergradient(model, glocal.optim.SGD(), space(), batches, (val[0].float(), val[1].float()),
                             F.mse_loss, mode=mode)
    assert h.dtype == DT and h.shape == (1,) and bool(h.ne(0).all())


def test_an_entry_that_reaches_no_loss_has_a_zero_hypergradient_in_reverse_mode():
    """A loss that takes hparams but ignores them: h is zero (not an autograd error). Forward mode
    raises here (autograd: "appears to not have been used in the graph"), an edge case left as is."""
    mode = "reverse"
    def train_loss(output, target, hparams):
        return F.mse_loss(output, target)

    batches, val = data(2)
    entries = glocal.HyperSpace(dtype=DT, unused=glocal.Log(1.0))
    h = glocal.hypergradient(mlp(), glocal.optim.SGD(lr=0.1), entries, batches, val, F.mse_loss, mode=mode,
                             train_loss=train_loss)
    assert torch.equal(h, torch.zeros(1, dtype=DT))


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        self.head = nn.Linear(2, 2).to(DT)  # used in training only

    def forward(self, x, head: bool = True):
        out = self.body(x)
        return self.head(out) if head else out


def test_a_parameter_the_validation_loss_does_not_reach_gets_zero_gradient():
    batches, val = data(2)

    def val_loss(output, target):
        return F.mse_loss(output, target)

    model = WithUnused()
    engine = ForwardEngine(model, glocal.optim.SGD(), space(), F.mse_loss, val_loss)
    for batch in batches:
        engine.step(batch)
    _, grads = engine.validation_gradient(val)
    assert len(grads) == len(list(model.parameters()))
    # the whole model reaches this loss: reference gradient from autograd
    model.eval()
    expected = torch.autograd.grad(F.mse_loss(model(val[0]), val[1]), list(model.parameters()))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-15)
    frozen_head = copy.deepcopy(model)

    def body_only(output, target):  # the head's output is ignored: its parameters get zero gradient
        return F.mse_loss(frozen_head.body(val[0]), target) + 0.0 * output.detach().sum()

    engine.val_loss = body_only
    _, grads = engine.validation_gradient(val)
    assert all(not g.any() for g in grads)  # no path from the engine's parameters to this loss
    _, h = engine.hypergradient(val)
    assert torch.equal(h, torch.zeros(1, dtype=DT))


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_keeps_skipped_steps_and_an_unaliased_snapshot(mode):
    batches, _ = data()
    model = mlp()
    engine = make_engine(mode, model, glocal.optim.SGD(momentum=0.5), space(), F.mse_loss)
    engine.step(batches[0])
    engine.step(batches[1])
    engine.snapshot()
    saved_params = [p.detach().clone() for p in model.parameters()]
    engine.step((torch.full((8, 3), math.inf, dtype=DT), batches[0][1]))  # non-finite loss: skipped
    assert engine.skipped_steps == 1 and engine.step_count == 2  # the rejected step is not counted
    engine.step(batches[2])
    state = engine.state_dict()
    for t in state["snapshot"]["params"]:  # the checkpoint is a copy: changing it leaves the engine alone
        t.add_(1.0)
    other_model = copy.deepcopy(model)
    other = make_engine(mode, other_model, glocal.optim.SGD(momentum=0.5), space(), F.mse_loss)
    fresh = engine.state_dict()
    other.load_state_dict(fresh)
    for t in fresh["snapshot"]["params"]:  # ... and loading copies it too
        t.add_(1.0)
    assert other.skipped_steps == 1 and other.step_count == engine.step_count == 3
    for e in (engine, other):
        assert e.restore() is True
    for p, q, v in zip(model.parameters(), other_model.parameters(), saved_params, strict=True):
        assert torch.equal(p.detach(), v) and torch.equal(q.detach(), v)


def test_an_old_checkpoint_without_counters_loads_with_zero_skipped_steps():
    batches, _ = data(1)
    engine = make_engine("forward", mlp(), glocal.optim.SGD(), space(), F.mse_loss)
    engine.step(batches[0])
    state = engine.state_dict()
    del state["skipped_steps"], state["snapshot"]
    other = make_engine("forward", mlp(), glocal.optim.SGD(), space(), F.mse_loss)
    other.load_state_dict(state)
    assert other.skipped_steps == 0 and other.restore() is False


def test_the_api_names_the_empty_argument():
    _, val = data(1)
    with pytest.raises(ValueError, match=r"^train_batches: expected at least one batch$"):
        glocal.hypergradient(mlp(), glocal.optim.SGD(), space(), [], val, F.mse_loss)


@pytest.mark.parametrize("mode", MODES)
def test_a_loss_must_return_a_scalar_tensor(mode):
    batches, _ = data(1)
    for bad in (lambda output, target: F.mse_loss(output, target, reduction="none"),  # a tensor of losses
                lambda output, target: 1.0):  # not a tensor
        engine = make_engine(mode, mlp(), glocal.optim.SGD(), space(), bad)
        with pytest.raises(ValueError, match=r"^loss must return a scalar tensor$"):
            engine.step(batches[0])


@pytest.mark.parametrize("mode", MODES)
def test_frozen_parameters_take_part_in_the_forward_and_stay_unchanged(mode):
    model = mlp()
    model[0].weight.requires_grad_(False)
    reference = copy.deepcopy(model)
    frozen = model[0].weight.detach().clone()
    batches, _ = data()
    engine = make_engine(mode, model, glocal.optim.SGD(), space(), F.mse_loss)
    torch_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.1)
    for batch in batches:
        engine.step(batch)
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    assert torch.equal(model[0].weight, frozen)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_make_engine_lists_the_modes():
    with pytest.raises(ValueError, match=r"^mode='sideways': expected one of 'plain', 'forward', 'reverse'$"):
        make_engine("sideways", mlp(), glocal.optim.SGD(), space(), F.mse_loss)


@pytest.mark.parametrize("mode", MODES)
def test_under_model_autocast_the_loss_sees_the_output_in_the_parameters_dtype(mode):
    seen = []

    def loss(output, target):
        seen.append(output.dtype)
        return F.mse_loss(output, target)

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))  # float32
    engine = make_engine(mode, model, glocal.optim.SGD(), space(), loss)
    engine.fmodel.autocast_dtype = torch.bfloat16  # as glocal.amp.model_autocast sets it
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    engine.step((x, y))
    assert seen == [torch.float32]


def test_make_engine_picks_the_engine_and_refuses_what_it_cannot_do():
    from glocal.hypergrad.compiled import CompiledForwardEngine

    reducer = HalfEach()
    for mode, kind in (("plain", PlainEngine), ("forward", ForwardEngine), ("reverse", ReverseEngine)):
        engine = make_engine(mode, mlp(), glocal.optim.SGD(), space(), F.mse_loss)
        assert type(engine) is kind and engine.reducer is None
        assert engine.val_loss is F.mse_loss  # the validation loss defaults to the training loss
    for mode, kind in (("plain", PlainEngine), ("reverse", ReverseEngine)):  # compile applies to forward only
        assert type(make_engine(mode, mlp(), glocal.optim.SGD(), space(), F.mse_loss, compile=True)) is kind
    val_loss = F.l1_loss
    for mode in ("plain", "forward"):
        engine = make_engine(mode, mlp(), glocal.optim.SGD(), space(), F.mse_loss, val_loss, reducer=reducer)
        assert engine.reducer is reducer and engine.val_loss is val_loss and engine.train_loss is F.mse_loss
    compiled = make_engine("forward", mlp(), glocal.optim.SGD(), space(), F.mse_loss, val_loss, compile=True)
    assert type(compiled) is CompiledForwardEngine
    assert compiled.train_loss is F.mse_loss and compiled.val_loss is val_loss
    message = (r"^mode='reverse' with a reducer: data-parallel tuning supports the forward and plain modes "
               r"\(strategies Local/Glocal in forward mode, Fixed\); run reverse mode in one process, or "
               r"pass reducer=None to train each process on its own$")
    with pytest.raises(ValueError, match=message):
        make_engine("reverse", mlp(), glocal.optim.SGD(), space(), F.mse_loss, reducer=reducer)
    with pytest.raises(ValueError, match=r"^compile=True: the compiled forward step has no reducer hook; "
                                         r"use compile=False$"):
        make_engine("forward", mlp(), glocal.optim.SGD(), space(), F.mse_loss, compile=True, reducer=reducer)


def test_a_builtin_loss_without_signature_is_called_without_hparams():
    from glocal.hypergrad.functional import accepts_hparams

    builtin = functools.partial(torch._C._nn.l1_loss, reduction=1)  # the mean; C: no readable signature
    assert accepts_hparams(builtin) is False
    model = mlp()
    reference = copy.deepcopy(model)
    batches, _ = data(1)
    make_engine("forward", model, glocal.optim.SGD(), space(), builtin).step(batches[0])
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    F.l1_loss(reference(batches[0][0]), batches[0][1]).backward()
    torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_a_model_without_trainable_parameters_is_refused():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match=r"^model: it has no parameters with requires_grad=True to train$"):
        make_engine("forward", model, glocal.optim.SGD(), space(), F.mse_loss)


def test_wrong_argument_types_name_the_argument_and_the_type_given():
    with pytest.raises(TypeError, match=r"^model: expected a torch.nn.Module, got str$"):
        make_engine("forward", "model", glocal.optim.SGD(), space(), F.mse_loss)
    with pytest.raises(TypeError, match=r"^space: expected a glocal.HyperSpace, got dict$"):
        make_engine("forward", mlp(), glocal.optim.SGD(), {"lr": 0.1}, F.mse_loss)
    with pytest.raises(TypeError, match=r"^optimizer: expected a differentiable glocal.optim optimizer "
                                        r"\(glocal.optim.SGD, glocal.optim.AdamW\), got SGD$"):
        make_engine("forward", mlp(), torch.optim.SGD([torch.zeros(1, requires_grad=True)]), space(), F.mse_loss)
