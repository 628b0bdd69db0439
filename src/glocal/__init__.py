"""glocal: online hyperparameter tuning by Koopman-extrapolated hypergradients.

The public namespace is curated: what is imported here is the supported API.
"""

from . import defaults, koopman, optim
from .hypergrad import hypergradient
from .hyperopt import RelativeSGD
from .space import HyperSpace, Identity, Log, Logit
from .strategies import Fixed, Global, Glocal, Local
from .tuner import Tuner

__version__ = "0.1.0"

__all__ = [
    "Fixed",
    "Global",
    "Glocal",
    "HyperSpace",
    "Identity",
    "Local",
    "Log",
    "Logit",
    "RelativeSGD",
    "Tuner",
    "defaults",
    "hypergradient",
    "koopman",
    "optim",
]
