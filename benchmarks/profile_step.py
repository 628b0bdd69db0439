"""Where one forward-mode training step spends its time, and the HVP variants that were compared.

Task ``mnist1d-mlp`` (MLP 40-100-100-10, batch 128), SGD-momentum tuning lr, weight decay and
momentum (q = 3), one thread, the thread's CPU clock (robust to other jobs on the machine):

1. phases of ``ForwardEngine.step``: the q Hessian-vector products
   (``TangentPropagator.gradient_tangents``), the update and its tangents (``advance``), the rest
   (forward, gradient with its graph, checks, write-back), against a plain ``torch.optim`` step;
2. ways to get the gradient and its q HVPs: the looped double backward (what the engine does),
   ``vmap`` over q of ``torch.func.jvp`` of the gradient (forward-over-reverse), and forward-AD
   dual tensors through ``autograd.grad`` looped over q; a validation gradient on 1000 and 256
   samples;
3. a check for subnormal floats (a CPU slowdown) after a tuned run from a 30x too small lr.

    python benchmarks/profile_step.py [--steps 300]
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from glocal.hypergrad import ForwardEngine
from glocal.strategies import Local
from glocal.tuner import Tuner


def _cpu_ms(fn: Callable[[Any], Any], batches: list, repeats: int = 20, block: int = 10) -> float:
    for b in batches[:3]:
        fn(b)
    times = []
    for r in range(repeats):
        start = time.thread_time()
        for b in batches[(r * block) % len(batches):][:block]:
            fn(b)
        times.append((time.thread_time() - start) / block * 1e3)
    return statistics.median(times)


def phases(task: Any, batches: list, steps: int) -> None:
    engine = ForwardEngine(copy.deepcopy(task.model), task.optimizer, task.space, task.train_loss, task.val_loss)
    spent: dict[str, float] = {}

    def timed(obj: Any, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            out = inner(*args, **kwargs)
            spent[label] = spent.get(label, 0.0) + time.thread_time() - start
            return out

        setattr(obj, name, wrapper)

    timed(engine.tangents, "gradient_tangents", "q HVPs (double backward)")
    timed(engine.tangents, "advance", "update + its tangents")
    for b in batches[:20]:
        engine.step(b)
    spent.clear()
    start = time.thread_time()
    for i in range(steps):
        engine.step(batches[i % len(batches)])
    total = (time.thread_time() - start) / steps * 1e3
    model = copy.deepcopy(task.model)
    h = task.space.to_dict()
    opt = torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])

    def plain(b: tuple) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(b[0]), b[1]).backward()
        opt.step()

    plain_ms = _cpu_ms(plain, batches, repeats=steps // 10)
    print(f"forward-mode step: {total:.3f} ms CPU = {total / plain_ms:.2f} x the plain step ({plain_ms:.3f} ms)")
    print("| phase | ms | share | x plain step |\n|---|---|---|---|")
    rest = total - sum(v / steps * 1e3 for v in spent.values())
    for label, value in [*((k, v / steps * 1e3) for k, v in spent.items()), ("rest (forward, gradient, checks)", rest)]:
        print(f"| {label} | {value:.3f} | {value / total:.0%} | {value / plain_ms:.2f} |")


def hvp_variants(task: Any, batches: list) -> None:
    model = copy.deepcopy(task.model)
    names = [n for n, _ in model.named_parameters()]
    params0 = tuple(p.detach().clone() for p in model.parameters())
    q = 3
    gen = torch.Generator().manual_seed(0)
    tangents = tuple(1e-2 * torch.randn(q, *p.shape, generator=gen) for p in params0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-3)

    def loss_of(p: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, dict(zip(names, p, strict=True)), (x,)), y)

    def plain(b: tuple) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(b[0]), b[1]).backward()
        opt.step()

    def gradient_only(b: tuple) -> Any:
        p = tuple(t.detach().requires_grad_() for t in params0)
        return torch.autograd.grad(loss_of(p, *b), p)

    def double_backward(b: tuple) -> Any:
        p = tuple(t.detach().requires_grad_() for t in params0)
        g = torch.autograd.grad(loss_of(p, *b), p, create_graph=True)
        return [torch.autograd.grad(g, p, [z[i] for z in tangents], retain_graph=i < q - 1) for i in range(q)]

    def forward_over_reverse(b: tuple) -> Any:
        def g(p: tuple) -> Any:
            return grad(loss_of)(p, *b)

        return vmap(lambda z: jvp(g, (params0,), (z,)), out_dims=(None, 0))(tangents)

    def dual_loop(b: tuple) -> Any:
        out = []
        for i in range(q):
            with fwAD.dual_level():
                p = tuple(fwAD.make_dual(t.detach().requires_grad_(), z[i]) for t, z in zip(params0, tangents,
                                                                                          strict=True))
                g = torch.autograd.grad(loss_of(p, *b), p)
                out.append([fwAD.unpack_dual(t).tangent for t in g])
        return out

    engine = ForwardEngine(copy.deepcopy(task.model), task.optimizer, task.space, task.train_loss, task.val_loss)
    sub = tuple(t[:256] for t in task.val)
    rows = {
        "plain torch.optim step": plain,
        "gradient only": gradient_only,
        "gradient + 3 HVPs: looped double backward (used)": double_backward,
        "gradient + 3 HVPs: vmap(jvp(grad)) forward-over-reverse": forward_over_reverse,
        "gradient + 3 HVPs: forward-AD duals through autograd.grad, looped": dual_loop,
        "validation gradient, 1000 samples": lambda b: engine.validation_gradient(task.val),
        "validation gradient, 256 samples": lambda b: engine.validation_gradient(sub),
    }
    results = {k: _cpu_ms(f, batches) for k, f in rows.items()}
    base = results["plain torch.optim step"]
    print("| computation | ms CPU | x plain step |\n|---|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")


def subnormals(steps: int) -> None:
    from glocal_bench import tasks

    task = tasks.make("mnist1d-mlp", seed=0, init={"lr": 0.1 / 30})
    tuner = Tuner(task.model, task.optimizer, task.space, task.train_loss, task.val_loss, Local(window=100),
                  torch.optim.SGD([task.space.raw], lr=1.0), val=task.val)
    batches = task.batches(0)
    for _ in range(steps):
        tuner.step(next(batches))

    def count(tensors: Any) -> int:
        tiny = torch.finfo(torch.float32).tiny
        return sum(int(((t.abs() > 0) & (t.abs() < tiny)).sum()) for t in tensors)

    with torch.no_grad():
        probs = torch.softmax(task.model.eval()(task.val[0]), -1)
    print(f"subnormal floats after {steps} Local steps from lr/30: softmax {count([probs])}, parameters "
          f"{count(task.model.parameters())}, tangents {count(tuner.engine.tangent_params)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from glocal_bench import tasks

    task = tasks.make("mnist1d-mlp", seed=0)
    stream = task.batches(0)
    batches = [next(stream) for _ in range(400)]
    print(f"load average {os.getloadavg()[0]:.1f}")
    phases(task, batches, args.steps)
    hvp_variants(task, batches)
    subnormals(2000)


if __name__ == "__main__":
    main()
