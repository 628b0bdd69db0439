"""Reducers for single-process tests of the data-parallel hooks: the mean over two ranks when the
other rank contributes zeros, recording what each collective carries."""

import torch


class HalfAll:
    """Halves what it is given, one tensor per call or several in one ``mean_all`` collective (as
    ``glocal.distributed.Reducer``); ``what`` lists the collectives in order, by name."""

    def __init__(self) -> None:
        self.what: list[str] = []

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.what.append("one tensor")
        return 0.5 * tensor

    def mean_all(self, tensors, what: str = "tensors"):
        self.what.append(what)
        return tuple(0.5 * t for t in tensors)
