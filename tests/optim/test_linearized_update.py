"""The hand-written ``linearized_update`` of SGD and AdamW against forward-mode AD of ``update``.

The reference is ``torch.func.jvp`` of the optimizer's own ``update`` (flat tensors, hyperparameters
as ``space.values(raw)``), one tangent direction at a time, in float64; the linearised update must
give the same new parameters and state and the same tangents to round-off.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

import glocal
from glocal.optim import SGD, AdamW

P = 37  # flat parameter count


def _slopes(space: glocal.HyperSpace, names: tuple[str, ...]) -> dict[str, tuple[int, torch.Tensor]]:
    raw = space.raw.detach().clone().requires_grad_(True)
    values = space.values(raw)
    (d,) = torch.autograd.grad(sum(values[n].sum() for n in names), raw)
    return {n: (space.slice_of(n).start, d[space.slice_of(n).start].detach()) for n in names}


def _reference(optimizer, space, params, state, grads, step, t_params, t_state, t_grads):
    raw = space.raw.detach().clone()
    q = len(space)

    def f(p, s, g, r):
        new_p, new_s = optimizer.update((p,), s, (g,), space.values(r), step)
        return new_p[0], new_s

    outs = []
    for i in range(q):
        tangents = (t_params[i], tuple(t[i] for t in t_state), t_grads[i], torch.eye(q, dtype=raw.dtype)[i])
        outs.append(jvp(f, (params, state, grads, raw), tangents))
    (new_p, new_s), _ = outs[0]
    t_new_p = torch.stack([o[1][0] for o in outs])
    t_new_s = tuple(torch.stack([o[1][1][j] for o in outs]) for j in range(len(state)))
    return new_p, new_s, t_new_p, t_new_s


CASES = [
    ("sgd-momentum", lambda: SGD(lr=0.1, momentum=0.9, weight_decay=3e-3),
     dict(lr=glocal.Log(0.1), weight_decay=glocal.Log(3e-3), momentum=glocal.Logit(0.9)), 1),
    ("sgd-all", lambda: SGD(lr=0.1, momentum=0.9, weight_decay=3e-3, dampening=0.2),
     dict(lr=glocal.Log(0.1), weight_decay=glocal.Log(3e-3), momentum=glocal.Logit(0.9),
          dampening=glocal.Logit(0.2)), 1),
    ("sgd-nesterov", lambda: SGD(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
     dict(lr=glocal.Log(0.1), momentum=glocal.Logit(0.9)), 1),
    ("sgd-plain-lr", lambda: SGD(lr=0.1), dict(lr=glocal.Log(0.1)), 0),
    ("sgd-untuned-wd", lambda: SGD(lr=0.1, weight_decay=1e-2, momentum=0.5), dict(lr=glocal.Log(0.1)), 1),
    ("sgd-untuned-wd-one", lambda: SGD(lr=0.1, weight_decay=1.0, momentum=0.5), dict(lr=glocal.Log(0.1)), 1),
    ("adamw-lr-wd", lambda: AdamW(lr=1e-2, weight_decay=0.1),
     dict(lr=glocal.Log(1e-2), weight_decay=glocal.Log(0.1)), 2),
    ("adamw-all", lambda: AdamW(lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1),
     dict(lr=glocal.Log(1e-2), weight_decay=glocal.Log(0.1), beta1=glocal.Logit(0.8), beta2=glocal.Logit(0.99),
          eps=glocal.Log(1e-3)), 2),
]


@pytest.mark.parametrize("step", [1, 2, 7])
@pytest.mark.parametrize("zero_grad_tangent", [False, True])
@pytest.mark.parametrize(("name", "make", "entries", "groups"), CASES, ids=[c[0] for c in CASES])
def test_linearized_update_matches_forward_ad(name, make, entries, groups, step, zero_grad_tangent):
    torch.manual_seed(0)
    optimizer = make()
    space = glocal.HyperSpace(dtype=torch.float64, **entries)
    q = len(space)
    params, grads = torch.randn(P, dtype=torch.float64), torch.randn(P, dtype=torch.float64)
    state = tuple(torch.randn(P, dtype=torch.float64).abs() for _ in range(groups))
    if groups == 2:
        state[1][:3] = 0.0  # second moment exactly zero: the safe square root's branch
        grads[:2] = 0.0
    t_params = torch.randn(q, P, dtype=torch.float64)
    t_state = tuple(torch.randn(q, P, dtype=torch.float64) for _ in range(groups))
    t_grads = torch.zeros(q, P, dtype=torch.float64) if zero_grad_tangent else torch.randn(q, P, dtype=torch.float64)
    names = tuple(space.names)
    with torch.no_grad():
        values = space.values(space.raw.detach())
    got = optimizer.linearized_update(params, state, grads, values, step, t_params, t_state,
                                      None if zero_grad_tangent else t_grads, _slopes(space, names))
    want = _reference(optimizer, space, params, state, grads, step, t_params, t_state, t_grads)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=1e-10, atol=1e-12)
    assert len(got[3]) == len(want[3])
    for a, b in zip(got[3], want[3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got[2]).all()


def test_add_row_scalar_row_and_dense_per_group_tangent():
    """A scalar h enters one row (slope * coefficient); a per-group h's dense (q, p) tangent every row."""
    from glocal.optim.base import add_row

    torch.manual_seed(0)
    tangent, coefficient = torch.randn(3, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    dense, slope = torch.randn(3, 5, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    got = tangent.clone()
    add_row(got, {"lr": dense}, "lr", coefficient)
    torch.testing.assert_close(got, tangent + dense * coefficient, rtol=0, atol=1e-15)
    got = tangent.clone()
    add_row(got, {"lr": (1, slope)}, "lr", coefficient)
    want = tangent.clone()
    want[1] += 0.7 * coefficient
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    got = tangent.clone()
    add_row(got, {"lr": dense}, "momentum", coefficient)  # not tuned: unchanged
    assert torch.equal(got, tangent)


def test_sgd_first_momentum_step_does_not_hand_back_the_grad_tangent():
    """At step 1 the momentum buffer's tangent is the gradient's; the caller may reuse its input
    tensor, so the returned state tangent must be a copy, not that tensor."""
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1))
    params, grads = torch.randn(P, dtype=torch.float64), torch.randn(P, dtype=torch.float64)
    t_params, t_grads = torch.randn(1, P, dtype=torch.float64), torch.randn(1, P, dtype=torch.float64)
    state, t_state = (torch.zeros(P, dtype=torch.float64),), (torch.zeros(1, P, dtype=torch.float64),)
    with torch.no_grad():
        values = space.values(space.raw.detach())
    _, _, _, new_t_state = SGD(lr=0.1, momentum=0.9).linearized_update(
        params, state, grads, values, 1, t_params, t_state, t_grads, _slopes(space, ("lr",)))
    assert torch.equal(new_t_state[0], t_grads)
    t_grads.zero_()  # the caller reuses its buffer
    assert new_t_state[0].abs().sum() > 0
