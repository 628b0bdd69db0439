"""A model as a pure function of (parameters, buffers, input), and the loss calling convention.

Loss convention (training and validation): a batch is a tuple ``(x, *rest)``; the model is applied
to ``x`` and the loss is called as ``loss(output, *rest)``. A training loss that declares a keyword
parameter ``hparams`` also receives the dict of hyperparameter values (for example per-class loss
weights), and its dependence on them is differentiated through.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

Batch = Sequence[Any]
LossFn = Callable[..., Tensor]


def accepts_hparams(loss: LossFn) -> bool:
    """Whether ``loss`` takes a ``hparams`` keyword (so it depends on the hyperparameters).

    A loss module (``nn.CrossEntropyLoss()``) is judged by its ``forward``: the module's own
    ``__call__`` takes ``**kwargs`` and would otherwise be handed ``hparams`` it cannot accept.
    """
    target = loss.forward if isinstance(loss, nn.Module) else loss
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "hparams" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def split_batch(batch: Batch, name: str = "batch") -> tuple[Any, tuple[Any, ...]]:
    """(x, rest) of a batch ``(x, y, ...)``; a clear error for anything else."""
    if isinstance(batch, Tensor) or not isinstance(batch, list | tuple) or len(batch) < 2:
        raise ValueError(f"{name}: expected a tuple (inputs, targets, ...), got {type(batch).__name__}")
    return batch[0], tuple(batch[1:])


def call_loss(loss: LossFn, output: Tensor, rest: tuple[Any, ...], hparams: dict[str, Tensor] | None) -> Tensor:
    value = loss(output, *rest, hparams=hparams) if hparams is not None else loss(output, *rest)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("loss must return a scalar tensor")
    return value.reshape(())


class FunctionalModel:
    """Calls ``model`` with given trainable parameters and buffers (``functional_call``, strict)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = list(model.named_parameters())
        self.param_names = tuple(n for n, p in named if p.requires_grad)
        self.frozen_names = tuple(n for n, p in named if not p.requires_grad)
        self.buffer_names = tuple(n for n, _ in model.named_buffers())
        if not self.param_names:
            raise ValueError("model: it has no parameters with requires_grad=True to train")
        #: when set (``glocal.amp.model_autocast``): forward under autocast to this dtype, output cast back
        self.autocast_dtype: torch.dtype | None = None

    def parameters(self) -> tuple[Tensor, ...]:
        """The model's trainable parameter tensors (the live ones, in a fixed order)."""
        lookup = dict(self.model.named_parameters())
        return tuple(lookup[n] for n in self.param_names)

    def buffers(self) -> tuple[Tensor, ...]:
        lookup = dict(self.model.named_buffers())
        return tuple(lookup[n] for n in self.buffer_names)

    def __call__(self, params: Sequence[Tensor], buffers: Sequence[Tensor], x: Any) -> Tensor:
        """Output of the model; buffers are updated in place where the model does so (BatchNorm)."""
        tensors = dict(zip(self.param_names, params, strict=True))
        tensors.update(zip(self.buffer_names, buffers, strict=True))
        if self.frozen_names:
            lookup = dict(self.model.named_parameters())
            tensors.update((n, lookup[n].detach()) for n in self.frozen_names)
        if self.autocast_dtype is None:
            return functional_call(self.model, tensors, (x,), strict=True)
        reference = params[0]
        with torch.autocast(reference.device.type, dtype=self.autocast_dtype):
            output = functional_call(self.model, tensors, (x,), strict=True)
        if isinstance(output, Tensor) and output.is_floating_point() and output.dtype != reference.dtype:
            output = output.to(reference.dtype)  # the loss and everything after it in full precision
        return output

    @contextmanager
    def mode(self, training: bool) -> Iterator[None]:
        """Temporarily set train/eval mode (validation runs in eval mode)."""
        was = self.model.training
        self.model.train(training)
        try:
            yield
        finally:
            self.model.train(was)

    def write_back(self, params: Sequence[Tensor], buffers: Sequence[Tensor]) -> None:
        """Copy values into the model's own tensors, in place (the user's model stays current)."""
        with torch.no_grad():
            for target, value in zip(self.parameters(), params, strict=True):
                if target is not value:
                    target.copy_(value)
            for target, value in zip(self.buffers(), buffers, strict=True):
                if target is not value:
                    target.copy_(value)
