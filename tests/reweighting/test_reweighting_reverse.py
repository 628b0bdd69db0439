"""Reverse-mode local trajectories for per-sample weights: exact rows, record points, bounded memory."""

import copy
import gc
import itertools
import weakref

import pytest
import torch
from torch import nn

import glocal
from glocal.losses import SampleWeightedCrossEntropy
from glocal_bench.tasks.base import cross_entropy

N, BATCH, CLASSES = 16, 4, 3


def _problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=gen)
    val = (torch.randn(10, 5, generator=gen, dtype=torch.float64), torch.randint(0, CLASSES, (10,), generator=gen))
    order = torch.cat([torch.randperm(N, generator=gen) for _ in range(20)])
    batches = [(x[i], y[i], i) for i in order.split(BATCH)]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, CLASSES)).to(torch.float64)
    return model, batches, val


def _space():
    w = torch.linspace(0.5, 1.5, N, dtype=torch.float64)
    return glocal.HyperSpace(dtype=torch.float64, sample_weights=glocal.Log(w))


class Recording(glocal.Glocal):
    """Glocal that keeps every window's trajectory (rows h_0 = 0, h_k, ..., h_tau)."""

    def __post_init__(self):
        super().__post_init__()
        self.trajectories = []

    def estimate(self, trajectory, window_end):
        self.trajectories.append(trajectory.clone())
        return super().estimate(trajectory, window_end)


def _run(mode, windows=2, window=6, record_every=2):
    model, batches, val = _problem()
    space = _space()
    strategy = Recording(window=window, total_steps=windows * window * 3, record_every=record_every, mode=mode,
                         anchor="window")  # per-window trajectories in both modes (reverse mode's only anchor)
    opt = glocal.optim.SGD(lr=0.3, momentum=0.9)
    tuner = glocal.Tuner(model, opt, space, SampleWeightedCrossEntropy(), cross_entropy, strategy,
                         torch.optim.SGD([space.raw], lr=1.0), val=val, clip_norm=None)
    for batch in batches[: windows * window]:
        tuner.step(batch)
    return tuner, strategy


def test_reverse_trajectory_rows_are_exact_hypergradients():
    tuner, strategy = _run("reverse")
    forward_tuner, forward = _run("forward")
    # h_j at every record_every-th step, from a backward pass through the steps so far
    assert tuner.history.val_steps == [2, 4, 6, 8, 10, 12]
    for a, b in zip(strategy.trajectories, forward.trajectories, strict=True):
        assert a.shape == (4, N) and torch.equal(a[0], torch.zeros(N))
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)
    assert torch.allclose(tuner.space.raw, forward_tuner.space.raw, atol=1e-10)
    # the first window's rows: the hypergradient of j steps from the initial model (and finite differences)
    model, batches, val = _problem()
    for row, j in ((1, 2), (3, 6)):
        space = _space()
        exact = glocal.hypergradient(model, glocal.optim.SGD(lr=0.3, momentum=0.9), space, batches[:j], val,
                                     cross_entropy, train_loss=SampleWeightedCrossEntropy(), mode="reverse")
        assert torch.allclose(strategy.trajectories[0][row], exact, atol=1e-12)
    eps, i = 1e-6, int(batches[0][2][0])

    def val_loss(shift):
        space = _space()
        with torch.no_grad():
            space.raw[i] += shift
        m = copy.deepcopy(model)
        t = glocal.Tuner(m, glocal.optim.SGD(lr=0.3, momentum=0.9), space, SampleWeightedCrossEntropy(),
                         cross_entropy, glocal.Fixed())
        for b in batches[:6]:
            t.step(b)
        with torch.no_grad():
            return float(cross_entropy(m(val[0]), val[1]))

    fd = (val_loss(eps) - val_loss(-eps)) / (2 * eps)
    assert strategy.trajectories[0][3][i].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_local_records_only_the_window_end():
    model, batches, val = _problem()
    space = _space()
    tuner = glocal.Tuner(model, glocal.optim.SGD(lr=0.3), space, SampleWeightedCrossEntropy(), cross_entropy,
                         glocal.Local(window=6, mode="reverse"), val=val)
    for batch in batches[:18]:
        tuner.step(batch)
    assert tuner.history.val_steps == [6, 12, 18]


def _graph_size(roots):
    """(nodes, saved tensor elements) of the autograd graph reachable from ``roots``."""
    seen, stack, saved = set(), [t.grad_fn for t in roots if t.grad_fn is not None], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for v in value if isinstance(value, tuple) else (value,):
                    if isinstance(v, torch.Tensor):
                        saved += v.numel()
        stack.extend(fn for fn, _ in node.next_functions)
    return len(seen), saved


@pytest.mark.parametrize("strategy", ["local", "glocal"])
def test_graph_memory_is_bounded_by_the_window(strategy):
    """The graph holds one window of steps: same size at the same step of every window, freed at its end."""
    model, batches, val = _problem()
    space = _space()
    window = 6
    strat = (glocal.Local(window=window, mode="reverse") if strategy == "local" else
             glocal.Glocal(window=window, total_steps=60, record_every=2, mode="reverse"))
    tuner = glocal.Tuner(model, glocal.optim.SGD(lr=0.3, momentum=0.9), space, SampleWeightedCrossEntropy(),
                         cross_entropy, strat, torch.optim.Adam([space.raw], lr=0.01), val=val)
    engine = tuner.engine
    sizes, refs = [], []
    for k in range(5):
        for batch in batches[k * window:(k + 1) * window]:
            tuner.step(batch)
            sizes.append(_graph_size(engine.params + engine.state))
        if refs:  # the previous window's final tensors (each holds its whole graph) died when this one began
            gc.collect()
            assert all(r() is None for r in refs[-1])
        # the window's end: its parameters and momentum buffers, non-leaf tensors of the graph
        refs.append([weakref.ref(t) for t in engine.params + engine.state])
        assert all(t.grad_fn is not None for t in engine.params + engine.state)
    per_window = [sizes[k * window:(k + 1) * window] for k in range(5)]
    assert per_window[1] == per_window[2] == per_window[3] == per_window[4]
    nodes = [n for n, _ in per_window[2]]
    saved = [s for _, s in per_window[2]]
    assert all(a < b for a, b in itertools.pairwise(nodes))
    # saved elements grow linearly with the steps of the window (one step's graph each)
    steps = [b - a for a, b in itertools.pairwise(saved)]
    assert max(steps) == min(steps) > 0 and 0 < saved[0] <= steps[0]
