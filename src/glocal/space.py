"""HyperSpace: named hyperparameters stored as one unconstrained leaf tensor.

A positive hyperparameter (learning rate, weight decay) is stored as its log, one in (0, 1)
(momentum, a beta) as its logit, so that an ordinary ``torch.optim`` optimizer can update the
raw vector without ever leaving the valid range. ``space.values()`` maps raw back to the
constrained values as differentiable functions of ``raw``: hypergradients are taken w.r.t. raw.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HyperSpace", "Identity", "Log", "Logit", "Transform"]


def _as_tensor(value: float | Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64).clone()
    return torch.tensor(float(value), dtype=torch.float64)


@dataclass(frozen=True)
class Transform:
    """A hyperparameter declaration: its initial constrained value and how it maps to raw."""

    value: float | Tensor

    kind = "identity"
    accepted = "any finite real number"

    def check(self, name: str) -> Tensor:
        """Return the initial value as a float64 tensor, or raise naming ``name`` and the range."""
        value = _as_tensor(self.value)
        if value.numel() == 0:
            raise ValueError(f"hyperparameter {name!r}: empty value; expected {self.accepted}")
        if not torch.isfinite(value).all():
            raise ValueError(f"hyperparameter {name!r}={_fmt(value)} is not finite; expected {self.accepted}")
        if not self._in_range(value).all():
            raise ValueError(f"hyperparameter {name!r}={_fmt(value)} is out of range; expected {self.accepted}")
        return value

    def _in_range(self, value: Tensor) -> Tensor:
        return torch.ones_like(value, dtype=torch.bool)

    def to_raw(self, value: Tensor) -> Tensor:
        return value

    def from_raw(self, raw: Tensor) -> Tensor:
        return raw


class Identity(Transform):
    """An unconstrained real hyperparameter (raw == value)."""


class Log(Transform):
    """A positive hyperparameter stored as its natural log."""

    kind = "log"
    accepted = "a value > 0"

    def _in_range(self, value: Tensor) -> Tensor:
        return value > 0

    def to_raw(self, value: Tensor) -> Tensor:
        return torch.log(value)

    def from_raw(self, raw: Tensor) -> Tensor:
        return torch.exp(raw)


class Logit(Transform):
    """A hyperparameter in the open interval (0, 1) stored as its logit."""

    kind = "logit"
    accepted = "a value in the open interval (0, 1)"

    def _in_range(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < 1)

    def to_raw(self, value: Tensor) -> Tensor:
        return torch.logit(value)

    def from_raw(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw)


def _fmt(value: Tensor) -> str:
    return f"{value.item():g}" if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"


class HyperSpace:
    """Named hyperparameters, e.g. ``HyperSpace(lr=Log(0.05), momentum=Logit(0.9))``.

    ``raw`` is a leaf tensor of shape (q,) in declaration order (q counts elements, so a
    vector entry such as ``class_weights=Log(torch.ones(10))`` contributes 10) with
    ``requires_grad=True``: pass it to a ``torch.optim`` optimizer to tune the space.
    """

    def __init__(
        self,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **entries: Transform,
    ) -> None:
        if not entries:
            raise ValueError("HyperSpace needs at least one hyperparameter, e.g. HyperSpace(lr=Log(0.1))")
        self._transforms: dict[str, Transform] = {}
        self._shapes: dict[str, torch.Size] = {}
        self._slices: dict[str, slice] = {}
        chunks: list[Tensor] = []
        offset = 0
        for name, transform in entries.items():
            if not isinstance(transform, Transform):
                raise ValueError(
                    f"hyperparameter {name!r}: expected a transform (glocal.Log, glocal.Logit or "
                    f"glocal.Identity), got {type(transform).__name__}"
                )
            value = transform.check(name)
            raw = transform.to_raw(value).reshape(-1)
            self._transforms[name] = transform
            self._shapes[name] = value.shape
            self._slices[name] = slice(offset, offset + raw.numel())
            offset += raw.numel()
            chunks.append(raw)
        dtype = dtype or torch.get_default_dtype()
        self.raw: Tensor = torch.cat(chunks).to(dtype=dtype, device=device).requires_grad_(True)

    # -- structure -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._transforms)

    def __len__(self) -> int:
        """q: the number of scalar hyperparameters (elements of ``raw``)."""
        return self.raw.numel()

    def __contains__(self, name: object) -> bool:
        return name in self._transforms

    def __iter__(self) -> Iterator[str]:
        return iter(self._transforms)

    def slice_of(self, name: str) -> slice:
        """The elements of ``raw`` that hold hyperparameter ``name``."""
        self._check_name(name)
        return self._slices[name]

    def transform_of(self, name: str) -> Transform:
        self._check_name(name)
        return self._transforms[name]

    def labels(self) -> list[str]:
        """One label per raw element: ``lr`` for scalars, ``class_weights[3]`` for vector entries."""
        out: list[str] = []
        for name, sl in self._slices.items():
            if self._shapes[name] == torch.Size([]):
                out.append(name)
            else:
                out.extend(f"{name}[{i}]" for i in range(sl.stop - sl.start))
        return out

    def _check_name(self, name: str) -> None:
        if name not in self._transforms:
            raise ValueError(f"unknown hyperparameter {name!r}; this space has {list(self._transforms)}")

    # -- values ----------------------------------------------------------------------------
    def values(self, raw: Tensor | None = None) -> dict[str, Tensor]:
        """Constrained values as differentiable functions of ``raw`` (default: ``self.raw``)."""
        raw = self.raw if raw is None else raw
        return {
            name: self._transforms[name].from_raw(raw[sl]).reshape(self._shapes[name])
            for name, sl in self._slices.items()
        }

    def to_dict(self) -> dict[str, float | list[float]]:
        """Current constrained values as plain Python numbers (for logs and result files)."""
        with torch.no_grad():
            return {name: (v.item() if v.numel() == 1 and v.dim() == 0 else v.tolist())
                    for name, v in self.values().items()}

    def set(self, **values: float | Tensor) -> None:
        """Overwrite hyperparameters by constrained value (range-checked), in place in ``raw``."""
        for name, value in values.items():
            self._check_name(name)
            checked = type(self._transforms[name])(value).check(name)
            if checked.numel() not in (1, self._slices[name].stop - self._slices[name].start):
                raise ValueError(f"hyperparameter {name!r}: expected shape {tuple(self._shapes[name])}")
            raw = self._transforms[name].to_raw(checked).reshape(-1)
            with torch.no_grad():
                self.raw[self._slices[name]] = raw.to(self.raw)

    def state_dict(self) -> dict[str, Tensor]:
        return {"raw": self.raw.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        raw = state["raw"]
        if raw.shape != self.raw.shape:
            raise ValueError(f"raw: expected shape {tuple(self.raw.shape)}, got {tuple(raw.shape)}")
        with torch.no_grad():
            self.raw.copy_(raw)

    def __repr__(self) -> str:
        parts = []
        for name, value in self.to_dict().items():
            shown = f"{value:.4g}" if isinstance(value, float) else f"[{len(value)} values]"
            parts.append(f"{name}={self._transforms[name].kind}:{shown}")
        return f"HyperSpace({', '.join(parts)})"

