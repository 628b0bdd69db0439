"""bfloat16 autocast: the forward in bfloat16, tangents and hypergradients in float32; float16 refused.

Tolerances against the same run in float32 (4 seeds x local/glocal, 4 windows of 8 steps): every
window's local hypergradient within 5e-3 relative (norm of the difference over the norm; largest
seen 7.2e-4), the tuned hyperparameters within 1e-3 relative (seen 1.8e-4), the final validation
loss within 1e-3 relative (seen 4.1e-5). bfloat16 keeps 8 significant bits (rounding 2^-9 = 2e-3).
"""

import contextlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal


def _problem(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(640, 20, generator=g)
    y = (x[:, :5] + 0.3 * torch.randn(640, 5, generator=g)).argmax(1)
    return model, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)], (x[512:], y[512:])


def _run(seed, strategy, precision):
    model, batches, val = _problem(seed)
    dtypes: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy, strategy,
                         torch.optim.SGD([space.raw], lr=1.0), val=val)
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    for i in range(32):
        with context():
            tuner.step(batches[i % len(batches)])
    seen = set(dtypes)
    with torch.no_grad():
        final = float(F.cross_entropy(model(val[0]), val[1]))
    return tuner, final, seen


def _relative(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("strategy", [lambda: glocal.Local(window=8),
                                      lambda: glocal.Glocal(window=8, total_steps=32, record_every=2)],
                         ids=["local", "glocal"])
def test_bf16_autocast_follows_the_float32_run(seed, strategy):
    full, full_loss, full_dtypes = _run(seed, strategy(), "fp32")
    half, half_loss, half_dtypes = _run(seed, strategy(), "bf16")
    assert full_dtypes == {torch.float32}
    assert half_dtypes == {torch.bfloat16}  # the forward really ran in bfloat16
    assert all(t.dtype == torch.float32 for t in half.engine.tangent_params + half.engine.tangent_state)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    for w_half, w_full in zip(half.history.windows, full.history.windows, strict=True):
        assert _relative(w_half["local"], w_full["local"]) < 5e-3
    for name, value in full.hparams.items():
        assert half.hparams[name] == pytest.approx(value, rel=1e-3)
    assert half.hparams["lr"] != pytest.approx(0.05, rel=0.05)  # it did tune
    assert half_loss == pytest.approx(full_loss, rel=1e-3)
    assert not torch.is_autocast_enabled("cpu")


def test_the_hypergradient_is_accumulated_in_float32_not_rounded_to_bfloat16():
    """With one parameter tensor, h = grad . Z is one product: under a plain autocast region it would be
    a bfloat16 matmul, every h_j on the bfloat16 grid."""
    _, batches, val = _problem(0)
    linear = nn.Linear(20, 5, bias=False)
    space = glocal.HyperSpace(lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    tuner = glocal.Tuner(linear, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Local(window=4), torch.optim.SGD([space.raw], lr=1.0), val=val)
    for i in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tuner.step(batches[i])
    local = torch.tensor([w["local"] for w in tuner.history.windows], dtype=torch.float32)
    assert local.abs().min() > 0
    assert not torch.equal(local, local.to(torch.bfloat16).float())


def test_autocast_is_restored_after_a_step():
    model, batches, val = _problem(0)
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=2),
                         val=val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tuner.step(batches[0])
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert tuner.engine.fmodel.autocast_dtype is None
        assert model(val[0]).dtype == torch.bfloat16


def test_float16_autocast_is_refused_with_a_clear_message_and_nothing_changes():
    model, batches, val = _problem(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = glocal.HyperSpace(lr=glocal.Log(0.05))
    tuner = glocal.Tuner(model, glocal.optim.SGD(), space, F.cross_entropy, F.cross_entropy, glocal.Local(window=2),
                         val=val)
    with pytest.raises(ValueError, match=r"float16 autocast is not supported.*GradScaler.*bfloat16"), \
            torch.autocast("cpu", dtype=torch.float16):
        tuner.step(batches[0])
    assert tuner.step_count == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
