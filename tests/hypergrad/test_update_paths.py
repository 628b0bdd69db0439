"""The three ways ``TangentPropagator`` linearises an optimizer update give the same tangents.

``linearized_update`` (hand-written, SGD/AdamW: the default), one forward-mode AD pass over flat
tensors (any ``elementwise`` optimizer) and ``torch.func.jvp`` vmapped over q (any optimizer) are
run on the same inputs in float64, with scalar and per-group hyperparameters and a constant.
"""

from __future__ import annotations

import pytest
import torch

import glocal
from glocal.hypergrad.tangents import TangentPropagator
from glocal.optim import SGD, AdamW

DT = torch.float64
SHAPES = ((5, 3), (5,), (2, 5))


class NoHandWritten(SGD):
    """SGD without ``linearized_update``: the forward-AD flat path."""

    linearized_update = None
    elementwise = True


class NoHandWrittenAdamW(AdamW):
    linearized_update = None
    elementwise = True


class Generic(SGD):
    """Not elementwise: the vmap(jvp) path."""

    elementwise = False


class GenericAdamW(AdamW):
    elementwise = False


def _run(optimizer, space, groups=None, constants=None, steps=3):
    torch.manual_seed(0)
    params = tuple(torch.randn(s, dtype=DT) for s in SHAPES)
    state = optimizer.init(params, tuned=space.names)
    prop = TangentPropagator(optimizer, space, params, state, groups=groups)
    q = len(space)
    out = []
    for step in range(1, steps + 1):
        grads = tuple(torch.randn(s, dtype=DT) for s in SHAPES)
        t_grads = None if step == 1 else tuple(torch.randn(q, *s, dtype=DT) for s in SHAPES)
        new_p, new_s, t_p, t_s = prop.advance(params, state, grads, t_grads, step, constants)
        prop.commit(tuple(t.clone() for t in t_p), tuple(t.clone() for t in t_s))
        params, state = tuple(new_p), tuple(new_s)
        out.append([*params, *state, *t_p, *t_s])
    return out


def _assert_same(a, b):
    for xs, ys in zip(a, b, strict=True):
        for x, y in zip(xs, ys, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_hand_written_forward_ad_and_vmap_paths_agree(kind):
    if kind == "sgd":
        make = [lambda: SGD(lr=0.1, momentum=0.9, weight_decay=1e-2, dampening=0.1), lambda: NoHandWritten(
            lr=0.1, momentum=0.9, weight_decay=1e-2, dampening=0.1), lambda: Generic(
            lr=0.1, momentum=0.9, weight_decay=1e-2, dampening=0.1)]
        entries = dict(lr=glocal.Log(0.1), weight_decay=glocal.Log(1e-2), momentum=glocal.Logit(0.9))
    else:
        make = [lambda: AdamW(lr=1e-2, weight_decay=0.1), lambda: NoHandWrittenAdamW(lr=1e-2, weight_decay=0.1),
                lambda: GenericAdamW(lr=1e-2, weight_decay=0.1)]
        entries = dict(lr=glocal.Log(1e-2), beta1=glocal.Logit(0.8), beta2=glocal.Logit(0.95), eps=glocal.Log(1e-4))
    runs = [_run(m(), glocal.HyperSpace(dtype=DT, **entries)) for m in make]
    _assert_same(runs[0], runs[1])
    _assert_same(runs[0], runs[2])


def test_per_group_values_and_constants_agree_with_forward_ad():
    def space():
        return glocal.HyperSpace(dtype=DT, lr=glocal.Log(torch.tensor([0.1, 0.05])),
                                 momentum=glocal.Logit(torch.tensor([0.9, 0.5])))

    groups = [0, 0, 1]
    constants = {"weight_decay": 1e-2}
    fast = _run(SGD(lr=0.1, momentum=0.9), space(), groups, constants)
    reference = _run(NoHandWritten(lr=0.1, momentum=0.9), space(), groups, constants)
    _assert_same(fast, reference)
