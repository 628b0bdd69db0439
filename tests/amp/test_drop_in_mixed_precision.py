"""The drop-in optimizers under bfloat16 autocast: the forward in bfloat16, the tangents in float32.

Tolerances against the same loop in float32 (3 seeds, 4 windows of 6 steps): the tuned lr within
1e-3 relative (largest seen 2.3e-4), each window's local hypergradient within 5e-3 relative
(largest seen 8.7e-4). float16 (GradScaler or an enclosing float16 autocast) is refused. The
backward runs outside autocast, as torch.amp recommends: inside it, the double-backward graph's
matmuls also run in bfloat16 (2-4% error in h, measured).
"""

import contextlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal


def _loop(seed, precision, step_inside=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(448, 20, generator=g)
    y = (x[:, :5] + 0.3 * torch.randn(448, 5, generator=g)).argmax(1)
    x_val, y_val = x[384:], y[384:]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    dtypes = set()
    model[0].register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))

    def val():
        with autocast():
            return F.cross_entropy(model(x_val), y_val)

    opt = glocal.GlocalSGD(model.parameters(), lr=0.05, momentum=0.5, tune=("lr", "momentum"), strategy="local",
                           window=6, val_closure=val, hyper_lr=1.0)
    for i in range(24):
        xb, yb = x[(i % 6) * 64:(i % 6 + 1) * 64], y[(i % 6) * 64:(i % 6 + 1) * 64]
        opt.zero_grad()
        with autocast():
            loss = F.cross_entropy(model(xb), yb)
        loss.backward(create_graph=True)  # outside autocast, as torch.amp recommends for backward passes
        with autocast() if step_inside else contextlib.nullcontext():  # step() inside a region works the same
            opt.step()
    return opt, dtypes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_drop_in_follows_the_float32_loop(seed):
    full, full_dtypes = _loop(seed, "fp32")
    half, half_dtypes = _loop(seed, "bf16")
    inside, _ = _loop(seed, "bf16", step_inside=True)
    assert full_dtypes == {torch.float32} and half_dtypes == {torch.bfloat16}
    assert all(t.dtype == torch.float32 for s in half.state.values() for t in s.values() if torch.is_tensor(t))
    for opt in (half, inside):
        for w_half, w_full in zip(opt.history.windows, full.history.windows, strict=True):
            a, b = torch.tensor(w_half["local"]), torch.tensor(w_full["local"])
            assert float((a - b).norm() / b.norm()) < 5e-3
        relative = abs(opt.hparams["lr"] / full.hparams["lr"] - 1)
        assert relative < 1e-3, relative
    assert inside.hparams == half.hparams
    assert half.hparams["lr"] != pytest.approx(0.05, rel=0.05)


def test_float16_is_refused_through_grad_scaler_and_autocast():
    model = nn.Linear(4, 2)
    opt = glocal.GlocalSGD(model.parameters(), lr=0.1, strategy="local", window=2,
                           val_closure=lambda: model(torch.ones(1, 4)).sum())
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(3, 4)).pow(2).sum()).backward(create_graph=True)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"GradScaler.*float16 autocast is not supported"), \
            pytest.warns(FutureWarning, match="GradScaler"):
        scaler.step(opt)
    assert torch.equal(model.weight, before)
    opt.zero_grad()
    model(torch.ones(3, 4)).pow(2).sum().backward(create_graph=True)
    with pytest.raises(ValueError, match="float16 autocast is not supported"), \
            torch.autocast("cpu", dtype=torch.float16):
        opt.step()
    assert torch.equal(model.weight, before)
