"""Data-parallel tuning: the averages every rank needs, over a ``torch.distributed`` process group.

DDP averages gradients through backward hooks, which ``torch.autograd.grad`` and double backward
bypass; glocal therefore reduces explicitly, at fixed points of a step: the training gradient and
loss (p + 1 numbers), the q tangent gradients (q x p: the real cost) and, at each record, the
validation loss and hypergradient (q + 1). With mean losses over equal shards the averages equal
the whole batch's, so every rank applies the identical update and holds identical phi.

``Reducer()`` is active when a default process group with more than one rank is initialised and an
identity otherwise (no process group: today's single-process behaviour at no cost). It starts by
broadcasting parameters, buffers and phi from rank 0 (``sync_start``) and checks once per window
that phi and a fingerprint of the parameters agree bitwise across ranks (``check_agree``), with a
clear error on divergence. A collective that fails (a peer died, or the process group's timeout
passed) raises ``DistributedError`` naming what was being reduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class DistributedError(RuntimeError):
    """A collective failed (a peer process died or timed out) or the ranks no longer agree."""


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def default_group_active() -> bool:
    """Whether a default process group with more than one rank is initialised."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Reducer:
    """All-reduce means over ``group`` (default: the default process group); identity without one.

    ``Reducer()`` reads the process group when it is created; create it after
    ``torch.distributed.init_process_group``. ``bytes_reduced`` counts the payload this rank sent
    into all-reduces (for benchmarks; broadcasts and checks are not counted).
    """

    def __init__(self, group: Any = None) -> None:
        dist = _dist()
        self.group = group
        self.active = group is not None or default_group_active()
        if self.active:
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            self.rank, self.world_size = 0, 1
        self.bytes_reduced = 0

    def __repr__(self) -> str:
        return f"Reducer(rank={self.rank}, world_size={self.world_size}, active={self.active})"

    def _fail(self, what: str, error: Exception) -> DistributedError:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return DistributedError(
            f"glocal.distributed: {what} failed on rank {self.rank} of {self.world_size}: {first} "
            "(a peer process probably died or exceeded the process group's timeout; see its log)"
        )

    # -- means -----------------------------------------------------------------------------
    def mean_(self, tensors: Sequence[Tensor], what: str = "tensors") -> None:
        """Replace each tensor, in place, by its mean over the ranks (one all-reduce per dtype/device)."""
        if not self.active or not tensors:
            return
        dist = _dist()
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for members in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in members]) if len(members) > 1 \
                else members[0].detach().reshape(-1).clone()
            try:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            except RuntimeError as error:
                raise self._fail(f"all-reduce of the {what}", error) from None
            self.bytes_reduced += flat.numel() * flat.element_size()
            flat.div_(self.world_size)
            offset = 0
            with torch.no_grad():
                for t in members:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def __call__(self, tensor: Tensor) -> Tensor:
        """The mean of ``tensor`` over the ranks, as a new tensor: the engines' reducer hook."""
        return self.mean((tensor,))[0]

    def mean_all(self, tensors: Sequence[Tensor], what: str = "tensors") -> tuple[Tensor, ...]:
        """Like calling the reducer on each tensor, in one all-reduce (per dtype/device)."""
        return self.mean(tensors, what)

    def mean(self, tensors: Sequence[Tensor], what: str = "tensors") -> tuple[Tensor, ...]:
        """The tensors' means over the ranks, as new tensors (the inputs are not changed)."""
        if not self.active:
            return tuple(tensors)
        out = tuple(t.detach().clone() for t in tensors)
        self.mean_(out, what)
        return out

    def mean_float(self, value: float, what: str = "value", like: Tensor | None = None) -> float:
        """A Python number's mean over the ranks (in ``like``'s dtype and device; default float64 CPU)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=like.dtype if like is not None else torch.float64,
                         device=like.device if like is not None else None)
        self.mean_((t,), what)
        return float(t[0])

    # -- agreement -------------------------------------------------------------------------
    def broadcast_(self, tensors: Sequence[Tensor], what: str = "tensors", src: int = 0) -> None:
        """Overwrite each tensor, in place, with rank ``src``'s."""
        if not self.active:
            return
        dist = _dist()
        try:
            with torch.no_grad():
                for t in tensors:
                    buf = t.detach().contiguous()
                    dist.broadcast(buf, src=src, group=self.group)
                    if buf.data_ptr() != t.data_ptr():
                        t.copy_(buf)
        except RuntimeError as error:
            raise self._fail(f"broadcast of the {what} from rank {src}", error) from None

    def sync_start(self, model: nn.Module | None = None, raw: Tensor | None = None) -> None:
        """Give every rank rank 0's parameters, buffers and phi (``raw``), as DDP does at construction."""
        if not self.active:
            return
        if model is not None:
            self.broadcast_([*model.parameters(), *model.buffers()], "model parameters and buffers")
        if raw is not None:
            self.broadcast_([raw], "hyperparameters (phi)")

    def check_agree(self, raw: Tensor, params: Sequence[Tensor] = ()) -> None:
        """Raise ``DistributedError`` unless phi (``raw``) and a parameter fingerprint agree bitwise.

        One all-gather of q + 1 numbers per call: phi itself and the sum of all parameters (float64),
        which changes with any parameter that drifts. Call it once per window.
        """
        if not self.active:
            return
        dist = _dist()
        with torch.no_grad():
            parts = [raw.detach().reshape(-1).to(torch.float64)]
            if params:
                parts.append(sum(p.detach().to(torch.float64).sum() for p in params).reshape(1))
            mine = torch.cat(parts)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        try:
            dist.all_gather(gathered, mine, group=self.group)
        except RuntimeError as error:
            raise self._fail("the per-window agreement check", error) from None
        q = raw.numel()
        for r, theirs in enumerate(gathered):
            if torch.equal(theirs, mine):
                continue
            what = "phi (the hyperparameters)" if not torch.equal(theirs[:q], mine[:q]) else "the model parameters"
            diff = float((theirs - mine).abs().max())
            raise DistributedError(
                f"glocal.distributed: ranks diverged: {what} on rank {self.rank} differ from rank {r} "
                f"(max abs difference {diff:.3g}). Every rank must run the same code on equally sized shards "
                "with the same seeds; a step that depends on rank-local data (e.g. BatchNorm statistics) "
                "must not change what is reduced"
            )


def shard(batch: Sequence[Tensor] | Tensor, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s equal share (along dim 0) of every tensor in ``batch``.

    Equal shards are what make the mean of per-rank mean losses equal the whole batch's mean loss;
    a batch whose size is not divisible by ``world_size`` is a ValueError.
    """
    if world_size == 1:
        return batch
    single = isinstance(batch, Tensor)
    items = (batch,) if single else tuple(batch)
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, Tensor) or t.dim() == 0:
            out.append(t)
            continue
        n = t.shape[0]
        if n % world_size:
            raise ValueError(f"batch[{i}]: {n} rows do not split into {world_size} equal shards; "
                             f"use a batch size divisible by the number of processes")
        size = n // world_size
        out.append(t[rank * size:(rank + 1) * size])
    if single:
        return out[0]
    return out if isinstance(batch, list) else tuple(out)


def resolve_reducer(reducer: Any) -> Any:
    """``"auto"``: a ``Reducer`` when a default process group of more than one rank is initialised, else
    None; None or a callable (tensor -> its mean over the ranks) is returned as given."""
    if isinstance(reducer, str):
        if reducer != "auto":
            raise ValueError(f"reducer={reducer!r}: expected 'auto', None, or a callable such as "
                             "glocal.distributed.Reducer()")
        return Reducer() if default_group_active() else None
    if reducer is not None and not callable(reducer):
        raise TypeError(f"reducer: expected 'auto', None or a callable (tensor -> mean over ranks), "
                        f"got {type(reducer).__name__}")
    return reducer
