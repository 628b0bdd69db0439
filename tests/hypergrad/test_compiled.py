"""The compiled forward step (CompiledForwardEngine) gives the eager ForwardEngine's tangents (float64)."""

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


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_matches_eager(case):
    make_optimizer, make_space = CASES[case]
    eager = ForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
    compiled = CompiledForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
    for i, batch in enumerate(batches()):
        loss = eager.step(batch)
        try:
            compiled_loss = compiled.step(batch)
        except Exception as error:  # torch.compile unavailable here (no C++ compiler, unsupported platform)
            if i == 1 and type(error).__name__ in ("BackendCompilerFailed", "InductorError", "RuntimeError"):
                pytest.skip(f"torch.compile unavailable: {type(error).__name__}: {str(error)[:200]}")
            raise
        assert compiled_loss == pytest.approx(loss, rel=1e-9)
    pairs = [*zip(eager.tangent_params, compiled.tangent_params, strict=True),
             *zip(eager.tangent_state, compiled.tangent_state, strict=True),
             *zip(eager.fmodel.parameters(), compiled.fmodel.parameters(), strict=True)]
    for expected, got in ((e.detach(), g.detach()) for e, g in pairs):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))


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
