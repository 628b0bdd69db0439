"""glocal: online hyperparameter tuning by Koopman-extrapolated hypergradients."""

__version__ = "0.1.0"
