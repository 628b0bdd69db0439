"""Mixed precision: the model's forward in bfloat16 under autocast, the tuning arithmetic in float32.

Wrap the training step in ``torch.autocast`` as usual::

    with torch.autocast("cpu", dtype=torch.bfloat16):   # or "cuda"
        tuner.step(batch)

The Tuner then runs only the model's forward passes (training and validation) under autocast
and everything else with autocast off: the gradients (the parameters' dtype), their double
backward, the optimizer update, the tangents and the hypergradient h = grad L_val . Z keep the
parameters' dtype (float32), so h is not rounded to bfloat16 by an autocast matmul. float16 is
refused: its range needs loss scaling (``torch.amp.GradScaler``), which covers one backward, not
the double backward and the tangent propagation that forward-mode hypergradients take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")
__all__ = ["FLOAT16_REFUSED", "check_autocast_dtype", "full_precision", "model_autocast", "under_autocast"]

FLOAT16_REFUSED = (
    "float16 autocast is not supported: float16 needs loss scaling (torch.amp.GradScaler), which scales one "
    "backward but not the double backward and tangent propagation of forward-mode hypergradients; use "
    "torch.autocast(device_type, dtype=torch.bfloat16) instead"
)


def check_autocast_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if glocal can tune under autocast to it (bfloat16), else a ValueError saying why."""
    if dtype == torch.float16:
        raise ValueError(FLOAT16_REFUSED)
    if dtype != torch.bfloat16:
        raise ValueError(f"autocast dtype {dtype}: expected torch.bfloat16")
    return dtype


@contextmanager
def model_autocast(model: Any, device_type: str) -> Iterator[None]:
    """Move an enclosing autocast region of ``device_type`` to ``model``'s forward passes only.

    ``model`` is a ``FunctionalModel``: its ``autocast_dtype`` is set for the duration, and
    autocast is switched off around everything else. Without an enclosing autocast: no effect.
    """
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = check_autocast_dtype(torch.get_autocast_dtype(device_type))
    previous = model.autocast_dtype
    model.autocast_dtype = dtype
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        model.autocast_dtype = previous


@contextmanager
def full_precision(device_type: str) -> Iterator[torch.dtype | None]:
    """Autocast off inside; yields the enclosing autocast's dtype (None without one; float16 refused).

    The drop-in optimizers step inside it: the tangent propagation and the hypergradient run in the
    parameters' dtype even when ``opt.step()`` is called inside an autocast region.
    """
    if not torch.is_autocast_enabled(device_type):
        yield None
        return
    dtype = check_autocast_dtype(torch.get_autocast_dtype(device_type))
    with torch.autocast(device_type, enabled=False):
        yield dtype


def under_autocast(fn: Callable[[], T], device_type: str, dtype: torch.dtype | None) -> Callable[[], T]:
    """``fn`` called under autocast to ``dtype`` (``fn`` itself when ``dtype`` is None)."""
    if dtype is None:
        return fn

    def call() -> T:
        with torch.autocast(device_type, dtype=dtype):
            return fn()

    return call
