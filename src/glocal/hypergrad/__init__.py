"""Hypergradient engines: forward mode (tangents) and reverse mode (unrolled autograd).

The opt-in compiled forward step lives in ``glocal.hypergrad.compiled`` (imported on demand: it
pulls in ``torch.compile``).
"""

from .api import hypergradient
from .forward import ForwardEngine
from .plain import PlainEngine
from .reverse import ReverseEngine

__all__ = ["ForwardEngine", "PlainEngine", "ReverseEngine", "hypergradient"]
