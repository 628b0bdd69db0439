"""The no-regret suite's tasks: they build offline, train, and their hypergradients are exact."""

import pytest
import torch

from glocal import Local, Tuner
from glocal.hypergrad import ForwardEngine
from glocal_bench import tasks
from glocal_bench.tasks.suite import SUITE_TASKS as SUITE
from glocal_bench.tasks.suite import EncoderLayer, pointer_data


@pytest.mark.parametrize("name", SUITE)
def test_task_builds_reproducibly_and_describes_its_regime(name):
    a, b = tasks.make(name, seed=3), tasks.make(name, seed=3)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert tasks.describe()[name]
    assert len(a.grid_configurations()) <= 8  # the grid oracle stays small
    metrics = a.evaluate()
    assert all(v == v for v in metrics.values())


@pytest.mark.parametrize("name", SUITE)
def test_a_few_tuned_steps_lower_the_training_loss(name):
    task = tasks.make(name, seed=0)
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, Local(window=5),
                  val=task.val)
    batches = task.batches(0)
    losses = [tuner.step(next(batches))["train_loss"] for _ in range(20)]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert tuner.skipped_steps == 0 and len(tuner.history.windows) == 4


def test_transformer_forward_hypergradient_matches_finite_differences_in_float64():
    """The written-out attention has a double backward (torch's fused CPU kernels do not)."""
    task = tasks.make("seq-transformer", seed=0, dtype=torch.float64, batch_size=16)
    state = {k: v.clone() for k, v in task.model.state_dict().items()}

    def final_val(delta: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        task.model.load_state_dict(state)
        raw = task.space.raw.detach().clone()
        with torch.no_grad():
            if delta is not None:
                task.space.raw.add_(delta)
        engine = ForwardEngine(task.model, task.optimizer, task.space, task.train_loss, task.val_loss)
        batches = task.batches(0)
        for _ in range(6):
            engine.step(next(batches))
        value, h = engine.hypergradient(task.val)
        with torch.no_grad():
            task.space.raw.copy_(raw)
        return value, h

    _, h = final_val(None)
    eps = 1e-6
    for i in range(len(task.space)):
        e = torch.zeros(len(task.space), dtype=torch.float64)
        e[i] = eps
        numeric = (final_val(e)[0] - final_val(-e)[0]) / (2 * eps)
        assert float(h[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-10)


def test_encoder_layer_matches_torch_attention():
    torch.manual_seed(0)
    layer = EncoderLayer(8, 2, 16)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(layer.qkv.weight)
        reference.in_proj_bias.copy_(layer.qkv.bias)
        reference.out_proj.weight.copy_(layer.out.weight)
        reference.out_proj.bias.copy_(layer.out.bias)
    x = torch.randn(3, 5, 8)
    normed = layer.norm1(x)
    attended = x + reference(normed, normed, normed, need_weights=False)[0]
    expected = attended + layer.mlp(layer.norm2(attended))
    torch.testing.assert_close(layer(x), expected)


def test_pointer_labels_are_the_pointed_symbols():
    x, y = pointer_data(200, 6, 5, seed=1, noise=0.0)
    pointer = x[:, 0] - 5 + 1
    assert torch.equal(y, x[torch.arange(200), pointer])
    _, noisy = pointer_data(2000, 6, 5, seed=1, noise=0.5)
    clean = pointer_data(2000, 6, 5, seed=1, noise=0.0)[1]
    assert 0.3 < float((noisy != clean).float().mean()) < 0.5  # half flipped, a fifth of those to the same label
