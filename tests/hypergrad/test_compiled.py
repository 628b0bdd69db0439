"""The compiled forward step (CompiledForwardEngine) gives the eager ForwardEngine's tangents (float64)."""

import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import glocal
from glocal.hypergrad import ForwardEngine
from glocal.hypergrad.compiled import CompiledForwardEngine

DT = torch.float64


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(DT)


def batches(steps: int = 10, batch: int = 16):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 8, generator=g, dtype=DT), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(steps)]


CASES = {
    "sgd-momentum": (lambda: glocal.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3),
                     lambda: glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1), weight_decay=glocal.Log(1e-3),
                                               momentum=glocal.Logit(0.9))),
    "adamw": (lambda: glocal.optim.AdamW(lr=1e-2, weight_decay=1e-2),
              lambda: glocal.HyperSpace(dtype=DT, lr=glocal.Log(1e-2), weight_decay=glocal.Log(1e-2))),
}


#: the compiled graph reorders float64 arithmetic, nothing else: agreement to round-off (measured: see below)
TOLERANCE = 1e-13


def _needs_a_cpp_compiler() -> None:
    """Skip only where inductor's CPU backend cannot work at all: no C++ compiler on PATH."""
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler; none on PATH")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_matches_eager(case):
    _needs_a_cpp_compiler()
    make_optimizer, make_space = CASES[case]
    eager = ForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
    compiled = CompiledForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
    for batch in batches():  # any failure of torch.compile is a failure here (see _needs_a_cpp_compiler)
        loss = eager.step(batch)
        compiled_loss = compiled.step(batch)
        assert compiled_loss == pytest.approx(loss, rel=TOLERANCE)
    pairs = [*zip(eager.tangent_params, compiled.tangent_params, strict=True),
             *zip(eager.tangent_state, compiled.tangent_state, strict=True),
             *zip(eager.fmodel.parameters(), compiled.fmodel.parameters(), strict=True)]
    for expected, got in ((e.detach(), g.detach()) for e, g in pairs):
        torch.testing.assert_close(got, expected, rtol=TOLERANCE, atol=TOLERANCE * float(expected.abs().max()))


@pytest.mark.slow
def test_compiled_rejects_buffers_and_hparam_losses():
    space = glocal.HyperSpace(dtype=DT, lr=glocal.Log(0.1))
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).to(DT)
    with pytest.raises(ValueError, match="buffers"):
        CompiledForwardEngine(model, glocal.optim.SGD(lr=0.1), space, F.cross_entropy)

    def loss(output, target, hparams):
        return F.cross_entropy(output, target)

    with pytest.raises(ValueError, match="hparams"):
        CompiledForwardEngine(mlp(), glocal.optim.SGD(lr=0.1), space, loss)
