"""The protocol of differentiable inner optimizers.

An inner optimizer is a pure, out-of-place function of (params, state, grads, hyperparameters):
nothing is mutated and no value is turned into a Python number, so ``torch.func.jvp``, ``vmap``
and autograd see through every update (``torch.optim`` does not: inside ``torch.func.jvp`` it turns
the learning rate into a Python number and detaches the momentum buffer, silently giving wrong
tangents).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

Params = tuple[Tensor, ...]
State = tuple[Tensor, ...]


@runtime_checkable
class InnerOptimizer(Protocol):
    """What the hypergradient engines need from an optimizer."""

    #: names of the hyperparameters a HyperSpace entry may override
    hyperparameter_names: tuple[str, ...]

    def defaults(self) -> dict[str, float]:
        """The constructor's constant values, by hyperparameter name."""
        ...

    def init(self, params: Sequence[Tensor], tuned: Collection[str] = ()) -> State:
        """A fresh state for ``params`` (a flat tuple of tensors, possibly empty); ``tuned``: names in the space."""
        ...

    def update(
        self, params: Params, state: State, grads: Params, hparams: Mapping[str, Tensor | float], step: int
    ) -> tuple[Params, State]:
        """One step; ``step`` counts from 1 like ``torch.optim``'s; returns new (params, state)."""
        ...


def resolve(optimizer: InnerOptimizer, overrides: Mapping[str, Tensor | float]) -> dict[str, Tensor | float]:
    """The constructor constants, overridden by the entries of ``overrides`` the optimizer knows."""
    values: dict[str, Tensor | float] = dict(optimizer.defaults())
    for name in optimizer.hyperparameter_names:
        if name in overrides:
            values[name] = overrides[name]
    return values


def check_nonnegative(name: str, value: float, upper: float | None = None) -> float:
    """Validate a constructor constant, naming the argument and its accepted range."""
    value = float(value)
    if not (value >= 0 and (upper is None or value < upper)):
        accepted = f"0 <= {name} < {upper:g}" if upper is not None else f"{name} >= 0"
        raise ValueError(f"{name}={value!r} is out of range; expected {accepted}")
    return value
