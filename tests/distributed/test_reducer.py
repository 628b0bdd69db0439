"""glocal.distributed.Reducer on two real gloo processes: means, start-up broadcast, agreement, failures."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import expect_ok, run_ranks

from glocal.distributed import DistributedError, Reducer, shard


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
