"""glocal.distributed.Reducer on two real gloo processes: means, start-up broadcast, agreement, failures."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import expect_ok, run_ranks
from torch.nn import functional as F

import glocal
from glocal.distributed import DistributedError, Reducer, resolve_reducer, shard
from glocal.hypergrad.factory import make_engine


def test_without_a_process_group_the_reducer_is_an_identity():
    reducer = Reducer()
    assert not reducer.active and (reducer.rank, reducer.world_size) == (0, 1)
    t = torch.arange(3.0)
    reducer.mean_([t])
    reducer.check_agree(t, [t])
    assert torch.equal(t, torch.arange(3.0)) and reducer.mean_float(2.5) == 2.5 and reducer.bytes_reduced == 0


def test_shard_splits_every_tensor_into_equal_parts_and_refuses_unequal_ones():
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    parts = [shard((x, y), r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert shard((x, y), 0, 1) == (x, y)
    with pytest.raises(ValueError, match=r"batch\[1\]: 5 rows .* 2 equal shards"):
        shard((x[:4], y[:5]), 0, 2)


def _means_broadcast_and_agreement(rank: int, world: int) -> dict:
    reducer = Reducer()
    out: dict = {"rank": reducer.rank, "world": reducer.world_size}
    a = torch.full((2, 3), float(rank + 1), dtype=torch.float64)
    b = torch.tensor([10.0 * (rank + 1)], dtype=torch.float32)
    reducer.mean_([a, b], "test tensors")
    out["a"], out["b"], out["bytes"] = a, b, reducer.bytes_reduced
    out["float"] = reducer.mean_float(float(rank))
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, float(rank))
    raw = torch.tensor([float(rank), 1.0], dtype=torch.float64)
    reducer.sync_start(model, raw)
    out["weight"], out["raw"] = model.weight.detach().clone(), raw.clone()
    reducer.check_agree(raw, list(model.parameters()))  # agree after the broadcast: no error
    raw[0] += 1e-15 * rank  # a last-bit drift on rank 1 only
    try:
        reducer.check_agree(raw, list(model.parameters()))
    except DistributedError as error:
        out["phi_error"] = str(error)
    raw[0] = 0.0
    with torch.no_grad():
        model.bias[0] += rank
    try:
        reducer.check_agree(raw, list(model.parameters()))
    except DistributedError as error:
        out["param_error"] = str(error)
    return out


@pytest.mark.slow
def test_means_start_up_broadcast_and_agreement_check_on_two_gloo_processes():
    values = expect_ok(run_ranks(_means_broadcast_and_agreement))
    for rank, v in enumerate(values):
        assert (v["rank"], v["world"]) == (rank, 2)
        assert torch.equal(v["a"], torch.full((2, 3), 1.5, dtype=torch.float64))
        assert torch.equal(v["b"], torch.tensor([15.0])) and v["b"].dtype == torch.float32
        assert v["bytes"] == 6 * 8 + 4 and v["float"] == 0.5
        assert torch.equal(v["weight"], torch.zeros(2, 3)) and torch.equal(v["raw"], torch.tensor([0.0, 1.0],
                                                                                             dtype=torch.float64))
        assert "ranks diverged: phi (the hyperparameters)" in v["phi_error"]
        assert "ranks diverged: the model parameters" in v["param_error"]


def test_auto_is_none_without_a_process_group_and_bad_reducers_are_refused():
    assert resolve_reducer("auto") is None and resolve_reducer(None) is None
    with pytest.raises(ValueError, match="reducer='always': expected 'auto', None"):
        resolve_reducer("always")
    with pytest.raises(TypeError, match="reducer: expected 'auto', None or a callable"):
        resolve_reducer(5)


def test_reverse_mode_and_the_compiled_step_refuse_a_reducer():
    model = torch.nn.Linear(3, 2)
    space = glocal.HyperSpace(lr=glocal.Log(0.1))
    loss = torch.nn.functional.mse_loss
    with pytest.raises(ValueError, match="mode='reverse' with a reducer"):
        make_engine("reverse", model, glocal.optim.SGD(), space, loss, reducer=Reducer())
    with pytest.raises(ValueError, match="compile=True"):
        make_engine("forward", model, glocal.optim.SGD(), space, loss, compile=True, reducer=Reducer())


def test_any_callable_reducer_is_applied_per_tensor_in_one_process():
    """A user's callable (here: the mean over one rank, i.e. the identity, counting its calls)."""
    calls = []

    def one_rank_mean(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return t.clone()

    results = []
    for reducer in (None, one_rank_mean):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
        space = glocal.HyperSpace(lr=glocal.Log(0.1))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(24, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (24,), generator=g)
        tuner = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                             glocal.Local(window=3), val=(x[16:], y[16:]), reducer=reducer)
        for _ in range(6):
            tuner.step((x[:16], y[:16]))
        results.append((space.raw.detach().clone(), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))
    assert len(calls) > 6  # gradient, tangents, losses: the hook was used
