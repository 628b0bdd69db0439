"""In float64 the drop-in optimizers follow Tuner + glocal.optim exactly on the same batches."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal

DT = torch.float64


def problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(224, 6, generator=g, dtype=DT)
    y = (x[:, :3] + 0.3 * torch.randn(224, 3, generator=g, dtype=DT)).argmax(1)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 160, 32)]
    return model, batches, (x[160:], y[160:])


CASES = {
    "sgd-glocal": dict(
        tuner_opt=lambda: glocal.optim.SGD(momentum=0.9),
        space=lambda: glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.05), weight_decay=glocal.Log(1e-3)),
        strategy=lambda: glocal.Glocal(window=5, total_steps=25, record_every=1),
        drop_in=lambda params, val: glocal.GlocalSGD(
            params, lr=0.05, momentum=0.9, weight_decay=1e-3, tune=("lr", "weight_decay"), strategy="glocal",
            window=5, total_steps=25, record_every=1, val_closure=val)),
    "sgd-local-momentum": dict(
        tuner_opt=lambda: glocal.optim.SGD(weight_decay=1e-4),
        space=lambda: glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1), momentum=glocal.Logit(0.5)),
        strategy=lambda: glocal.Local(window=4),
        drop_in=lambda params, val: glocal.GlocalSGD(
            params, lr=0.1, momentum=0.5, weight_decay=1e-4, tune=("lr", "momentum"), strategy="local",
            window=4, val_closure=val)),
    "adamw-glocal": dict(
        tuner_opt=lambda: glocal.optim.AdamW(weight_decay=1e-2),
        space=lambda: glocal.HyperSpace(dtype=DT, lr=glocal.Log(1e-2), beta1=glocal.Logit(0.8)),
        strategy=lambda: glocal.Glocal(window=6, total_steps=25, record_every=2),
        drop_in=lambda params, val: glocal.GlocalAdamW(
            params, lr=1e-2, betas=(0.8, 0.999), weight_decay=1e-2, tune=("lr", "beta1"), strategy="glocal",
            window=6, total_steps=25, record_every=2, val_closure=val)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_drop_in_follows_tuner_exactly(case):
    spec = CASES[case]
    model, batches, val = problem()
    model2 = copy.deepcopy(model)
    space = spec["space"]()
    tuner = glocal.Tuner(model, spec["tuner_opt"](), space, F.cross_entropy, F.cross_entropy, spec["strategy"](),
                         val=val)
    opt = spec["drop_in"](model2.parameters(), lambda: F.cross_entropy(model2(val[0]), val[1]))
    steps = 25
    for i in range(steps):
        x, y = batches[i % len(batches)]
        tuner.step((x, y))
        opt.zero_grad()
        F.cross_entropy(model2(x), y).backward(create_graph=True)
        opt.step()
        for name in space.names:  # the tuned values, always current in param_groups
            expected = tuner.hparams[name]
            got = opt.param_groups[0]["betas"][0] if name == "beta1" else opt.param_groups[0][name]
            assert got == pytest.approx(expected, rel=1e-10, abs=0)
    window = tuner.strategy.window
    assert len(opt.history.windows) == len(tuner.history.windows) == steps // window
    assert all(w["updated"] if "updated" in w else not w["skipped"] for w in opt.history.windows)
    torch.testing.assert_close(opt.space.raw.detach(), space.raw.detach(), rtol=0, atol=1e-10)
    for p, q in zip(model2.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-10)
    for a, b in zip(opt.history.windows, tuner.history.windows, strict=True):
        torch.testing.assert_close(torch.tensor(a["local"]), torch.tensor(b["local"]), rtol=1e-9, atol=1e-12)
    assert not torch.equal(space.raw.detach(), spec["space"]().raw.detach())  # it did tune


def test_fixed_strategy_equals_torch_optim():
    model, batches, _ = problem()
    model2 = copy.deepcopy(model)
    opt = glocal.GlocalSGD(model2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True,
                           tune=("lr",), strategy="fixed")
    ref = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    for x, y in batches * 2:
        for o, m in ((opt, model2), (ref, model)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()  # no graph needed when nothing is tuned
            o.step()
    for p, q in zip(model2.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("make_inner", [lambda: glocal.optim.SGD(momentum=0.9), lambda: glocal.optim.AdamW()],
                         ids=["sgd", "adamw"])
def test_per_group_hypergradients_sum_to_the_shared_one(make_inner):
    """Two groups with equal lr: d L/d log lr_0 + d L/d log lr_1 = d L/d log lr (one shared lr, Tuner)."""
    model, batches, val = problem()
    model2 = copy.deepcopy(model)
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.03))
    tuner = glocal.Tuner(model, make_inner(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=5),
                         val=val)
    groups = [{"params": model2[0].parameters()}, {"params": model2[2].parameters()}]
    cls, extra = (glocal.GlocalSGD, {"momentum": 0.9}) if isinstance(make_inner(), glocal.optim.SGD) else (
        glocal.GlocalAdamW, {})
    opt = cls(groups, lr=0.03, tune=("lr",), strategy="local", window=5,
              val_closure=lambda: F.cross_entropy(model2(val[0]), val[1]), **extra)
    for x, y in batches:
        tuner.step((x, y))
        opt.zero_grad()
        F.cross_entropy(model2(x), y).backward(create_graph=True)
        opt.step()
    per_group = torch.tensor(opt.history.windows[0]["local"], dtype=DT)
    shared = torch.tensor(tuner.history.windows[0]["local"], dtype=DT)
    assert per_group.shape == (2,) and (per_group.abs() > 1e-6).all()
    torch.testing.assert_close(per_group.sum().reshape(1), shared, rtol=1e-9, atol=1e-12)
