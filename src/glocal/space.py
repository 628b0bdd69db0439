"""HyperSpace: named hyperparameters stored as one unconstrained leaf tensor.

A positive hyperparameter (learning rate, weight decay) is stored as its log, one in (0, 1)
(momentum, a beta) as its logit, so that an ordinary ``torch.optim`` optimizer can update the
raw vector without ever leaving the valid range. ``space.values()`` maps raw back to the
constrained values as differentiable functions of ``raw``: hypergradients are taken w.r.t. raw.

Every entry also has bounds, ``Log(0.01, low=1e-6, high=1.0)``; unset ones default by name
(``DEFAULT_BOUNDS``: an lr stays in [1e-8, 10]) or by kind, so that no hyper-optimizer step can
collapse a learning rate to 0 or blow it up to 1e30. ``space.clamp_()`` projects ``raw`` back into
the bounds after an update and says which hyperparameters it stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["DEFAULT_BOUNDS", "HyperSpace", "Identity", "Log", "Logit", "Transform"]

#: bounds of well-known hyperparameters when their declaration gives none (others: the kind's default)
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "lr": (1e-8, 10.0),
    "weight_decay": (1e-12, 10.0),
    "eps": (1e-16, 1.0),
}


def _as_tensor(value: float | Tensor, name: str, accepted: str) -> Tensor:
    try:
        if isinstance(value, Tensor):
            if value.is_complex():
                raise TypeError("complex")
            return value.detach().to(torch.float64).clone()
        if isinstance(value, bool | str | bytes) or value is None:
            raise TypeError(type(value).__name__)
        return torch.tensor(float(value), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"hyperparameter {name!r}={value!r}: expected a real number or a real tensor, "
                         f"{accepted}") from None


def _bound(value: object, name: str, which: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"hyperparameter {name!r}: {which}={value!r}: expected a real number or None")
    return float(value)


@dataclass(frozen=True)
class Transform:
    """A hyperparameter declaration: its initial constrained value, optional bounds ``[low, high]``
    on the constrained value, and how it maps to raw."""

    value: float | Tensor
    low: float | None = None
    high: float | None = None

    kind = "identity"
    accepted = "any finite real number"
    #: bounds used when neither the declaration nor ``DEFAULT_BOUNDS`` gives them
    default_bounds: ClassVar[tuple[float, float]] = (-math.inf, math.inf)

    def check(self, name: str) -> Tensor:
        """Return the initial value as a float64 tensor, or raise naming ``name`` and the range."""
        value = _as_tensor(self.value, name, self.accepted)
        if value.numel() == 0:
            raise ValueError(f"hyperparameter {name!r}: empty value; expected {self.accepted}")
        if not torch.isfinite(value).all():
            raise ValueError(f"hyperparameter {name!r}={_fmt(value)} is not finite; expected {self.accepted}")
        if not self._in_range(value).all():
            raise ValueError(f"hyperparameter {name!r}={_fmt(value)} is out of range; expected {self.accepted}")
        low, high = self.bounds(name)
        if (value < low).any() or (value > high).any():
            raise ValueError(f"hyperparameter {name!r}={_fmt(value)} is outside its bounds [{low:g}, {high:g}]; "
                             f"declare wider ones, e.g. {type(self).__name__}(value, low=..., high=...)")
        return value

    def bounds(self, name: str) -> tuple[float, float]:
        """``(low, high)`` on the constrained value: as declared, else by ``name``, else by kind; checked."""
        low, high = _bound(self.low, name, "low"), _bound(self.high, name, "high")
        named = DEFAULT_BOUNDS.get(name, self.default_bounds)
        low = named[0] if low is None else low
        high = named[1] if high is None else high
        edge = torch.tensor([low, high], dtype=torch.float64)
        raw = self.to_raw(edge)
        valid = ~torch.isnan(raw) & (self._in_range(edge) | torch.isinf(raw))  # inside, or the domain's edge
        if not (low < high and bool(valid.all())):
            raise ValueError(f"hyperparameter {name!r}: bounds [{low:g}, {high:g}]: expected low < high, both "
                             f"{self.accepted} (or the edges of that range)")
        return low, high

    def _in_range(self, value: Tensor) -> Tensor:
        return torch.ones_like(value, dtype=torch.bool)

    def to_raw(self, value: Tensor) -> Tensor:
        return value

    def from_raw(self, raw: Tensor) -> Tensor:
        return raw


class Identity(Transform):
    """An unconstrained real hyperparameter (raw == value)."""


class Log(Transform):
    """A positive hyperparameter stored as its natural log (default bounds [1e-8, 1e8])."""

    kind = "log"
    accepted = "a value > 0"
    default_bounds = (1e-8, 1e8)

    def _in_range(self, value: Tensor) -> Tensor:
        return value > 0

    def to_raw(self, value: Tensor) -> Tensor:
        return torch.log(value)

    def from_raw(self, raw: Tensor) -> Tensor:
        return torch.exp(raw)


class Logit(Transform):
    """A hyperparameter in the open interval (0, 1) stored as its logit (default bounds [1e-6, 1 - 1e-6])."""

    kind = "logit"
    accepted = "a value in the open interval (0, 1)"
    default_bounds = (1e-6, 1 - 1e-6)

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
        dtype = dtype or torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype!r}: expected a floating-point torch dtype (raw is optimized by "
                             "gradient steps), e.g. torch.float32 or torch.float64")
        self._transforms: dict[str, Transform] = {}
        self._shapes: dict[str, torch.Size] = {}
        self._slices: dict[str, slice] = {}
        chunks: list[Tensor] = []
        lows: list[Tensor] = []
        highs: list[Tensor] = []
        offset = 0
        for name, transform in entries.items():
            if not isinstance(transform, Transform):
                raise ValueError(
                    f"hyperparameter {name!r}: expected a transform (glocal.Log, glocal.Logit or "
                    f"glocal.Identity), got {type(transform).__name__}"
                )
            low, high = transform.bounds(name)
            transform = dataclasses.replace(transform, low=low, high=high)  # bounds resolved once
            value = transform.check(name)
            raw = transform.to_raw(value).reshape(-1)
            self._transforms[name] = transform
            self._shapes[name] = value.shape
            self._slices[name] = slice(offset, offset + raw.numel())
            offset += raw.numel()
            chunks.append(raw)
            edges = transform.to_raw(torch.tensor([low, high], dtype=torch.float64))
            lows.append(edges[0].expand(raw.numel()))
            highs.append(edges[1].expand(raw.numel()))
        self.raw: Tensor = torch.cat(chunks).to(dtype=dtype, device=device).requires_grad_(True)
        #: the bounds on ``raw`` (element-wise; +-inf where unbounded)
        self.raw_low: Tensor = torch.cat(lows).to(dtype=dtype, device=device)
        self.raw_high: Tensor = torch.cat(highs).to(dtype=dtype, device=device)

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
        """The declaration of ``name`` with its bounds resolved (``low``/``high`` always set)."""
        self._check_name(name)
        return self._transforms[name]

    def bounds_of(self, name: str) -> tuple[float, float]:
        """``(low, high)``: the bounds of the constrained value of ``name``."""
        transform = self.transform_of(name)
        assert transform.low is not None and transform.high is not None
        return transform.low, transform.high

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
            checked = dataclasses.replace(self._transforms[name], value=value).check(name)
            if checked.numel() not in (1, self._slices[name].stop - self._slices[name].start):
                raise ValueError(f"hyperparameter {name!r}: expected shape {tuple(self._shapes[name])}")
            raw = self._transforms[name].to_raw(checked).reshape(-1)
            with torch.no_grad():
                self.raw[self._slices[name]] = raw.to(self.raw)

    def clamp_(self) -> dict[str, str]:
        """Project ``raw`` into the bounds in place; return what was stopped, e.g. ``{"lr": "high"}``.

        Vector entries say how many elements hit which bound (``"low: 3 of 100"``). Bounds are hard
        (projected gradient steps): a value leaves a bound as soon as its hypergradient points inward.
        """
        with torch.no_grad():
            below = self.raw < self.raw_low
            above = self.raw > self.raw_high
            if not bool((below | above).any()):
                return {}
            self.raw.copy_(torch.minimum(torch.maximum(self.raw, self.raw_low), self.raw_high))
        hit: dict[str, str] = {}
        for name, sl in self._slices.items():
            n_low, n_high = int(below[sl].sum()), int(above[sl].sum())
            parts = [side for side, n in (("low", n_low), ("high", n_high)) if n]
            if self._shapes[name] != torch.Size([]):
                parts = [f"{side}: {n} of {sl.stop - sl.start}" for side, n in (("low", n_low), ("high", n_high))
                         if n]
            if parts:
                hit[name] = ", ".join(parts)
        return hit

    def state_dict(self) -> dict[str, Tensor]:
        return {"raw": self.raw.detach().clone()}

    def check_state_dict(self, state: Mapping[str, Tensor]) -> Tensor:
        """Validate a ``state_dict`` without changing anything; return its raw tensor (ValueError if bad)."""
        if not isinstance(state, Mapping) or "raw" not in state:
            raise ValueError("space state: expected a mapping with a 'raw' tensor (from HyperSpace.state_dict())")
        raw = state["raw"]
        if not isinstance(raw, Tensor) or not raw.is_floating_point():
            raise ValueError(f"space state 'raw': expected a floating-point tensor, got {type(raw).__name__}"
                             + (f" of dtype {raw.dtype}" if isinstance(raw, Tensor) else ""))
        if raw.shape != self.raw.shape:
            raise ValueError(f"space state 'raw': expected shape {tuple(self.raw.shape)}, got {tuple(raw.shape)}")
        labels = self.labels()
        bad = (~torch.isfinite(raw)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"space state 'raw': not finite at {', '.join(labels[i] for i in bad[:5])}")
        outside = ((raw.to(self.raw_low) < self.raw_low) | (raw.to(self.raw_high) > self.raw_high)).nonzero()
        if outside.numel():
            raise ValueError("space state 'raw': outside the bounds at "
                             + ", ".join(labels[i] for i in outside.flatten().tolist()[:5]))
        return raw

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load ``state_dict()`` output; nothing changes unless it is valid (shape, finite, within bounds)."""
        raw = self.check_state_dict(state)
        with torch.no_grad():
            self.raw.copy_(raw)

    def __repr__(self) -> str:
        parts = []
        for name, value in self.to_dict().items():
            shown = f"{value:.4g}" if isinstance(value, float) else f"[{len(value)} values]"
            parts.append(f"{name}={self._transforms[name].kind}:{shown}")
        return f"HyperSpace({', '.join(parts)})"

