"""Weighted training losses: normalisation, plain fallback, index handling, errors."""

import pytest
import torch
from torch.nn import functional as F

from glocal.hypergrad.functional import accepts_hparams
from glocal.losses import ClassWeightedCrossEntropy, SampleWeightedCrossEntropy, weighted_cross_entropy


def _data(n: int = 12, c: int = 4):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, c, generator=gen, dtype=torch.float64), torch.randint(0, c, (n,), generator=gen)


def test_uniform_weights_and_no_hparams_give_plain_cross_entropy():
    out, y = _data()
    plain = F.cross_entropy(out, y)
    cls, smp = ClassWeightedCrossEntropy(), SampleWeightedCrossEntropy()
    assert accepts_hparams(cls) and accepts_hparams(smp)
    assert torch.allclose(cls(out, y), plain) and torch.allclose(smp(out, y), plain)
    assert torch.allclose(smp(out, y, torch.arange(12)), plain)  # validation-style call with indices
    assert torch.allclose(cls(out, y, hparams={"class_weights": torch.ones(4, dtype=torch.float64)}), plain)
    idx = torch.arange(12)
    assert torch.allclose(smp(out, y, idx, hparams={"sample_weights": torch.full((30,), 0.5)}), plain)


def test_normalised_loss_is_invariant_to_scaling_all_weights():
    out, y = _data()
    w = torch.rand(4, dtype=torch.float64) + 0.1
    loss = ClassWeightedCrossEntropy()
    a = loss(out, y, hparams={"class_weights": w})
    b = loss(out, y, hparams={"class_weights": 7.0 * w})
    assert torch.allclose(a, b)
    raw = ClassWeightedCrossEntropy(normalize=False)
    scaled = raw(out, y, hparams={"class_weights": 7.0 * w})
    assert torch.allclose(scaled, 7.0 * raw(out, y, hparams={"class_weights": w}))
    manual = (w[y] * F.cross_entropy(out, y, reduction="none")).sum() / w[y].sum()
    assert torch.allclose(a, manual)


def test_sample_weights_are_looked_up_by_index_and_differentiable():
    out, y = _data()
    idx = torch.tensor([5, 0, 7, 7, 2, 9, 11, 3, 4, 1, 6, 8])
    w = torch.rand(20, dtype=torch.float64, requires_grad=True)
    value = SampleWeightedCrossEntropy()(out, y, idx, hparams={"sample_weights": w})
    assert torch.allclose(value, weighted_cross_entropy(out, y, w[idx]))
    (grad,) = torch.autograd.grad(value, w)
    unused = torch.ones(20, dtype=torch.bool)
    unused[idx] = False
    assert torch.all(grad[unused] == 0) and torch.all(grad[~unused] != 0)


def test_errors_are_clear():
    out, y = _data()
    with pytest.raises(ValueError, match=r"\(x, y, idx\)"):
        SampleWeightedCrossEntropy()(out, y, hparams={"sample_weights": torch.ones(12)})
    with pytest.raises(ValueError, match="out of range"):
        SampleWeightedCrossEntropy()(out, y, torch.arange(12), hparams={"sample_weights": torch.ones(5)})
    with pytest.raises(ValueError, match="no entry 'class_weights'"):
        ClassWeightedCrossEntropy()(out, y, hparams={"lr": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="3 weights for 4 classes"):
        ClassWeightedCrossEntropy()(out, y, hparams={"class_weights": torch.ones(3)})
