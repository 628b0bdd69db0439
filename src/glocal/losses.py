"""Weighted training losses whose hyperparameters are loss weights (data reweighting).

Both losses follow the engines' calling convention (``glocal.hypergrad.functional``): a training
batch ``(x, y)`` or ``(x, y, idx)`` gives ``loss(output, y[, idx], hparams=values)``, and the
weights are read from ``hparams[name]`` (a HyperSpace entry such as
``class_weights=glocal.Log(torch.ones(10))`` or ``sample_weights=glocal.Logit(torch.full((n,), 0.5))``).
Called without ``hparams`` (validation, ``Task.evaluate``) they are the plain mean cross entropy.

With ``normalize=True`` (the default) the batch loss is ``sum_i w_i l_i / sum_i w_i``: scaling all
weights by one factor leaves the step unchanged, so the weights set only the *relative* importance
of samples and never act as a hidden learning rate. ``normalize=False`` gives ``mean_i w_i l_i``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torch.nn import functional as F

__all__ = ["ClassWeightedCrossEntropy", "SampleWeightedCrossEntropy", "weighted_cross_entropy"]


def weighted_cross_entropy(output: Tensor, target: Tensor, weights: Tensor, normalize: bool = True) -> Tensor:
    """Cross entropy of logits ``output`` (n, C) with per-sample weights ``weights`` (n,).

    ``normalize``: ``sum w_i l_i / sum w_i`` (default), else ``mean w_i l_i``.
    """
    losses = F.cross_entropy(output, target, reduction="none")
    weights = weights.to(losses.dtype)
    if normalize:
        return (weights * losses).sum() / weights.sum()
    return (weights * losses).mean()


def _weights(hparams: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in hparams:
        raise ValueError(f"weighted loss: the HyperSpace has no entry {name!r} (it has {list(hparams)})")
    return hparams[name].reshape(-1)


class ClassWeightedCrossEntropy:
    """Cross entropy with one weight per class, ``hparams[name][y_i]`` (q = number of classes).

    Small q: tune it with forward mode. Without ``hparams`` it is the plain mean cross entropy.
    """

    def __init__(self, name: str = "class_weights", normalize: bool = True) -> None:
        self.name = name
        self.normalize = bool(normalize)

    def __call__(self, output: Tensor, target: Tensor, *, hparams: Mapping[str, Tensor] | None = None) -> Tensor:
        if hparams is None:
            return F.cross_entropy(output, target)
        weights = _weights(hparams, self.name)
        if weights.numel() != output.shape[-1]:
            raise ValueError(f"{self.name}: {weights.numel()} weights for {output.shape[-1]} classes")
        return weighted_cross_entropy(output, target, weights[target], self.normalize)

    def __repr__(self) -> str:
        return f"ClassWeightedCrossEntropy(name={self.name!r}, normalize={self.normalize})"


class SampleWeightedCrossEntropy:
    """Cross entropy with one weight per training sample, ``hparams[name][idx_i]``.

    Batches must be ``(x, y, idx)`` with ``idx`` the samples' indices in the training set
    (``Task(indexed_batches=True)`` yields them). q = the training-set size: tune it with reverse
    mode. Without ``hparams`` (or without ``idx``) it is the plain mean cross entropy.
    """

    def __init__(self, name: str = "sample_weights", normalize: bool = True) -> None:
        self.name = name
        self.normalize = bool(normalize)

    def __call__(self, output: Tensor, target: Tensor, index: Tensor | None = None, *,
                 hparams: Mapping[str, Tensor] | None = None) -> Tensor:
        if hparams is None:
            return F.cross_entropy(output, target)
        if index is None:
            raise ValueError(f"{self.name}: per-sample weights need batches (x, y, idx) with the sample indices")
        weights = _weights(hparams, self.name)
        if int(index.max()) >= weights.numel() or int(index.min()) < 0:
            raise ValueError(f"{self.name}: sample index out of range for {weights.numel()} weights")
        return weighted_cross_entropy(output, target, weights[index], self.normalize)

    def __repr__(self) -> str:
        return f"SampleWeightedCrossEntropy(name={self.name!r}, normalize={self.normalize})"
