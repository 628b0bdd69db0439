"""``glocal.hypergradient``: the exact hypergradient of a short training run, forward or reverse."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

from torch import Tensor, nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import Validation
from .factory import make_engine
from .functional import Batch, LossFn


def hypergradient(
    model: nn.Module,
    optimizer: InnerOptimizer,
    space: HyperSpace,
    train_batches: Iterable[Batch],
    val_batch: Validation,
    loss_fn: LossFn,
    mode: Literal["forward", "reverse"] = "forward",
    train_loss: LossFn | None = None,
) -> Tensor:
    """d loss_fn(model_T(x_val), y_val) / d space.raw, shape (q,).

    model_T is the model after one ``optimizer`` step per batch of ``train_batches``, from the
    model's current parameters and a fresh optimizer state. The model is not modified (a copy is
    trained), the work is done in the dtype and on the device of the model's parameters, and the
    validation loss is taken in eval mode. ``train_loss`` (default ``loss_fn``) is the training
    loss; give it a ``hparams`` keyword to make it depend on the hyperparameters.
    """
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode={mode!r}: expected 'forward' or 'reverse'")
    work = copy.deepcopy(model)
    engine = make_engine(mode, work, optimizer, space, train_loss or loss_fn, loss_fn)
    steps = 0
    for batch in train_batches:
        engine.step(batch)
        steps += 1
    if steps == 0:
        raise ValueError("train_batches: expected at least one batch")
    _, h = engine.hypergradient(val_batch)
    return h
