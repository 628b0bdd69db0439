"""Hypergradient engines: forward mode (tangents) and reverse mode (unrolled autograd)."""

from .api import hypergradient
from .forward import ForwardEngine
from .plain import PlainEngine
from .reverse import ReverseEngine

__all__ = ["ForwardEngine", "PlainEngine", "ReverseEngine", "hypergradient"]
