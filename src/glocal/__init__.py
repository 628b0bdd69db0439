"""glocal: online hyperparameter tuning by Koopman-extrapolated hypergradients.

The public namespace is curated: what is imported here is the supported API.
"""

from . import defaults, koopman, optim
from .hypergrad import hypergradient
from .hyperopt import RelativeSGD
from .outer import Global
from .space import HyperSpace, Identity, Log, Logit
from .strategies import Fixed, Glocal, Local
from .torch_optim import GlocalAdamW, GlocalSGD
from .tuner import Tuner

__version__ = "0.1.0"

__all__ = [
    "Fixed",
    "Global",
    "Glocal",
    "GlocalAdamW",
    "GlocalSGD",
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
