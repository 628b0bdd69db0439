"""glocal: online hyperparameter tuning by Koopman-extrapolated hypergradients.

The public namespace is curated: what is imported here is the supported API.
"""

from . import optim
from .hypergrad import hypergradient
from .space import HyperSpace, Identity, Log, Logit

__version__ = "0.1.0"

__all__ = ["HyperSpace", "Identity", "Log", "Logit", "hypergradient", "optim"]
