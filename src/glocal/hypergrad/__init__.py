"""Hypergradient engines: forward mode (tangents) and reverse mode (unrolled autograd).

The opt-in compiled forward step lives in ``glocal.hypergrad.compiled`` (imported on demand: it
pulls in ``torch.compile``).
"""

from .api import hypergradient
from .engine import Engine
from .factory import make_engine
from .forward import ForwardEngine
from .plain import PlainEngine
from .reverse import ReverseEngine
from .tangents import TangentPropagator

__all__ = ["Engine", "ForwardEngine", "PlainEngine", "ReverseEngine", "TangentPropagator", "hypergradient",
           "make_engine"]
