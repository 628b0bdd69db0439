"""The one place that picks an engine: from the differentiation mode and the compile option."""

from __future__ import annotations

from torch import nn

from ..optim.base import InnerOptimizer
from ..space import HyperSpace
from .engine import Engine
from .forward import ForwardEngine
from .functional import LossFn
from .plain import PlainEngine
from .reverse import ReverseEngine
from .tangents import Reducer

MODES = ("plain", "forward", "reverse")


def make_engine(
    mode: str,
    model: nn.Module,
    optimizer: InnerOptimizer,
    space: HyperSpace,
    train_loss: LossFn,
    val_loss: LossFn | None = None,
    *,
    compile: bool = False,
    reducer: Reducer | None = None,
) -> Engine:
    """An engine for ``mode`` ("plain": no derivatives, "forward": tangents, "reverse": unrolled graph).

    ``compile=True`` selects the ``torch.compile``d forward step (forward mode only; other modes
    ignore it). ``reducer``: the all-reduce hook (None for one process).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(repr(m) for m in MODES)}")
    if mode == "reverse" and reducer is not None:
        raise ValueError("mode='reverse' with a reducer: data-parallel tuning supports the forward and plain modes "
                         "(strategies Local/Glocal in forward mode, Fixed); run reverse mode in one process, or "
                         "pass reducer=None to train each process on its own")
    if mode == "forward" and compile:
        if reducer is not None:
            raise ValueError("compile=True: the compiled forward step has no reducer hook; use compile=False")
        from .compiled import CompiledForwardEngine  # imported on demand: it pulls in torch.compile

        return CompiledForwardEngine(model, optimizer, space, train_loss, val_loss)
    engine_type = {"plain": PlainEngine, "forward": ForwardEngine, "reverse": ReverseEngine}[mode]
    return engine_type(model, optimizer, space, train_loss, val_loss, reducer=reducer)
