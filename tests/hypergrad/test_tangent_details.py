"""``TangentPropagator``'s less travelled paths, float64, against reverse mode and the other update paths.

Gradients constant in theta (no graph: a loss linear in the output), parameters of mixed dtype (the
per-tensor buffers), one hyperparameter with and without optimizer state on the forward-AD path,
which linearisation ``advance`` dispatches to, and where the hyperparameters are computed (the
model's dtype, not the space's).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad import ForwardEngine, make_engine
from glocal.hypergrad.tangents import TangentPropagator
from glocal.optim import SGD

DT = torch.float64


def data(steps: int = 4, dtype=DT):
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 3, generator=g, dtype=DT).to(dtype), torch.randn(8, 2, generator=g, dtype=DT).to(dtype))
               for _ in range(steps)]
    val = (torch.randn(16, 3, generator=g, dtype=DT).to(dtype), torch.randn(16, 2, generator=g, dtype=DT).to(dtype))
    return batches, val


def mlp(dtype=DT) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_gradients_without_graph_give_zero_gradient_tangents():
    """Training loss linear in the output: the last bias's gradient is constant (no graph) and the
    double backward does not reach that bias; a linear model has no graph at all. Forward = reverse."""
    def linear_loss(output, target):
        return (output * target).mean()

    batches, val = data()
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1), momentum=glocal.Logit(0.5))
    for model in (mlp(), nn.Linear(3, 2).to(DT)):
        forward = glocal.hypergradient(model, SGD(), space, batches, val, F.mse_loss, mode="forward",
                                       train_loss=linear_loss)
        reverse = glocal.hypergradient(model, SGD(), space, batches, val, F.mse_loss, mode="reverse",
                                       train_loss=linear_loss)
        assert bool(reverse.ne(0).all())
        assert relative_error(forward, reverse) < 1e-13


class MixedDtype(nn.Module):
    """A float64 layer feeding a float32 one: the parameters are not one dtype (per-tensor buffers)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(3, 5).to(DT)
        self.second = nn.Linear(5, 2)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)).float()).double()


def test_parameters_of_mixed_dtype_train_like_torch_sgd():
    """The per-tensor gradient-tangent buffers (parameters not of one dtype) carry the steps. (The
    hypergradient itself is not taken here: the tangents are kept in the first parameter's dtype
    and ``hypergradient`` then mixes dtypes, a known limitation.)"""
    batches, _ = data()
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    model = MixedDtype()
    reference = copy.deepcopy(model)
    engine = ForwardEngine(model, SGD(momentum=0.5), space, F.mse_loss)
    assert not engine.tangents._uniform
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    for batch in batches:
        engine.step(batch)
        torch_opt.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        torch_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert [t.shape[1:] for t in engine.tangent_params] == [p.shape for p in model.parameters()]
    assert all(bool(t.ne(0).any()) for t in engine.tangent_params)


class NoHandWritten(SGD):
    """SGD without ``linearized_update``: the forward-AD flat path."""

    linearized_update = None
    elementwise = True


class CountingSGD(SGD):
    """SGD whose hand-written linearisation counts its calls."""

    elementwise = True
    calls = 0

    def linearized_update(self, *args, **kwargs):
        CountingSGD.calls += 1
        return super().linearized_update(*args, **kwargs)


SHAPES = ((4, 3), (4,))


def _run(optimizer, space, steps=3):
    torch.manual_seed(0)
    params = tuple(torch.randn(s, dtype=DT) for s in SHAPES)
    state = optimizer.init(params, tuned=space.names)
    prop = TangentPropagator(optimizer, space, params, state)
    out = []
    for step in range(1, steps + 1):
        grads = tuple(torch.randn(s, dtype=DT) for s in SHAPES)
        t_grads = None if step == 1 else tuple(torch.randn(len(space), *s, dtype=DT) for s in SHAPES)
        new_p, new_s, t_p, t_s = prop.advance(params, state, grads, t_grads, step)
        prop.commit(t_p, t_s)
        params, state = tuple(new_p), tuple(new_s)
        out.append([*params, *state, *t_p, *t_s])
    return out


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["no-state", "momentum"])
def test_one_hyperparameter_on_the_forward_ad_path_matches_the_hand_written_one(momentum):
    """q = 1, with no optimizer state (k = 0) and with a momentum buffer (k = 1)."""
    def space():
        return glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))

    fast = _run(SGD(momentum=momentum), space())
    flat = _run(NoHandWritten(momentum=momentum), space())
    assert len(fast[0]) == (4 if momentum == 0.0 else 8)
    for xs, ys in zip(fast, flat, strict=True):
        for x, y in zip(xs, ys, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


class NotElementwise(CountingSGD):
    """Declared not elementwise: the generic vmap(jvp) path, even though a linearisation exists."""

    elementwise = False


def test_the_hand_written_linearisation_is_used_when_the_optimizer_has_one():
    CountingSGD.calls = 0
    _run(CountingSGD(momentum=0.9), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)), steps=2)
    assert CountingSGD.calls == 2
    CountingSGD.calls = 0
    _run(NotElementwise(momentum=0.9), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)), steps=2)
    assert CountingSGD.calls == 0


def test_per_group_values_need_the_elementwise_path():
    params = (torch.zeros(3, dtype=DT), torch.zeros(2, dtype=DT))
    per_group = glocal.HyperSpace(dtype=DT, lr=glocal.Log(torch.tensor([0.1, 0.2], dtype=DT)))
    message = (r"^per-group hyperparameters need an elementwise optimizer \(glocal.optim.SGD / AdamW\) "
               r"over parameters of one dtype and device$")
    with pytest.raises(ValueError, match=message):
        TangentPropagator(NotElementwise(), per_group, params, (), groups=[0, 1])


def test_the_hyperparameters_are_computed_in_the_model_dtype():
    """A float64 space on a float32 model trains exactly as a float32 space holding the same raw
    values: the work is done in the model's dtype."""
    batches, val = data(dtype=torch.float32)
    space64 = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1), momentum=glocal.Logit(0.7))
    space32 = glocal.HyperSpace(dtype=torch.float32, lr=glocal.Log(0.1), momentum=glocal.Logit(0.7))
    with torch.no_grad():
        space64.raw.copy_(torch.tensor([-2.3, 0.4], dtype=torch.float32).to(DT))
        space32.raw.copy_(torch.tensor([-2.3, 0.4], dtype=torch.float32))
    results = []
    for space in (space64, space32):
        model = mlp(torch.float32)
        h = glocal.hypergradient(copy.deepcopy(model), SGD(), space, batches, val, F.mse_loss)
        engine = ForwardEngine(model, SGD(), space, F.mse_loss)
        for batch in batches:
            engine.step(batch)
        plain_model = mlp(torch.float32)
        plain = make_engine("plain", plain_model, SGD(), space, F.mse_loss)
        for batch in batches:
            plain.step(batch)
        results.append((h, [p.detach().clone() for p in model.parameters()],
                        [t.clone() for t in engine.tangent_params],
                        [p.detach().clone() for p in plain_model.parameters()]))
    (h64, p64, t64, q64), (h32, p32, t32, q32) = results
    assert h64.dtype == DT and h32.dtype == torch.float32
    assert torch.equal(h64.float(), h32)
    assert all(torch.equal(a, b) for a, b in zip(p64 + t64 + q64, p32 + t32 + q32, strict=True))


class BareSGD:
    """A minimal elementwise optimizer of its own (no ``linearized_update`` attribute at all)."""

    hyperparameter_names = ("lr",)
    elementwise = True

    def __init__(self, lr: float = 0.1) -> None:
        self.lr = lr

    def defaults(self) -> dict[str, float]:
        return {"lr": self.lr}

    def init(self, params, tuned=()):
        return ()

    def update(self, params, state, grads, hparams, step):
        lr = hparams.get("lr", self.lr)
        return tuple(p - lr * g for p, g in zip(params, grads, strict=True)), ()


def test_an_elementwise_optimizer_without_a_linearisation_takes_the_forward_ad_path():
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    bare = _run(BareSGD(), space)
    reference = _run(SGD(), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)))
    for xs, ys in zip(bare, reference, strict=True):
        for x, y in zip(xs, ys, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


class Unnamed(BareSGD):
    """As BareSGD; the entries are given by ``names`` (the optimizer lists none)."""

    hyperparameter_names = property(lambda self: (_ for _ in ()).throw(AttributeError("none")))


def test_an_optimizer_that_lists_no_names_is_tuned_through_the_given_names():
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    params = (torch.randn(3, dtype=DT),)
    prop = TangentPropagator(Unnamed(), space, params, (), names={"lr": "lr"})
    assert prop.names == {"lr": "lr"}
    assert TangentPropagator(Unnamed(), space, params, ()).names == {}  # nothing known, nothing named


def test_an_engine_refuses_space_entries_an_optimizer_without_names_cannot_know():
    from glocal.hypergrad import make_engine

    with pytest.raises(ValueError, match=r"^space: unknown hyperparameter\(s\) \['lr'\] for Unnamed; it accepts "):
        make_engine("forward", mlp(), Unnamed(), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)), F.mse_loss)


def test_an_entry_with_one_value_per_element_takes_the_generic_path():
    """lr with one value per element of the single parameter (not per group): d p'/d raw_i = -lr_i g_i."""
    lr = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(lr))
    p, g = torch.randn(3, dtype=DT), torch.randn(3, dtype=DT)
    prop = TangentPropagator(SGD(), space, (p,), ())
    new_p, _, t_p, _ = prop.advance((p,), (), (g,), None, 1)
    torch.testing.assert_close(new_p[0], p - lr * g, rtol=1e-15, atol=0)
    torch.testing.assert_close(t_p[0], torch.diag(-lr * g), rtol=1e-15, atol=0)


class CountingState(BareSGD):
    """Elementwise in the parameters, plus one global state tensor (a step counter): not k per parameter."""

    def init(self, params, tuned=()):
        return (torch.zeros((), dtype=params[0].dtype),)

    def update(self, params, state, grads, hparams, step):
        new_params, _ = super().update(params, (), grads, hparams, step)
        return new_params, (state[0] + 1,)


def test_a_state_that_is_not_one_tensor_per_parameter_takes_the_generic_path():
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    out = _run(CountingState(), space)
    reference = _run(SGD(), glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1)))
    for step, (xs, ys) in enumerate(zip(out, reference, strict=True), start=1):
        assert float(xs[2]) == step  # the counter
        for x, y in zip(xs[:2] + xs[3:5], ys, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)
