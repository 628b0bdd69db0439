"""How closely the exactness tests' independent computations agree (the basis of their tolerances).

Usage: PYTHONPATH=src:tests python benchmarks/bench_agreement.py [--compile]
Prints, for every case of tests/hypergrad/test_exactness.py, the relative error between forward and
reverse mode and between each and central finite differences (eps 1e-6, float64); with --compile
also the agreement of CompiledForwardEngine with the eager ForwardEngine over the cases of
tests/hypergrad/test_compiled.py (a few minutes: two compilations). One thread.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.nn import functional as F

import glocal


def exactness() -> None:
    from hypergrad.test_exactness import CASES, _relative_error, cnn, data, finite_differences, mlp, weighted_ce

    worst = {"forward-reverse": 0.0, "finite differences": 0.0}
    for case in sorted(CASES):
        for make in (mlp, cnn):
            optimizer, entries = CASES[case]
            space = glocal.HyperSpace(dtype=torch.float64, **entries)
            model = make()
            batches, val = data()
            f = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="forward")
            r = glocal.hypergradient(model, optimizer, space, batches, val, F.cross_entropy, mode="reverse")
            fd = finite_differences(model, optimizer, space, batches, val, F.cross_entropy)
            errors = (_relative_error(f, r), _relative_error(f, fd), _relative_error(r, fd))
            worst["forward-reverse"] = max(worst["forward-reverse"], errors[0])
            worst["finite differences"] = max(worst["finite differences"], *errors[1:])
            print(f"{case:16s} {make.__name__}: forward-reverse {errors[0]:.1e}  forward-FD {errors[1]:.1e}  "
                  f"reverse-FD {errors[2]:.1e}", flush=True)
    for mode in ("forward", "reverse"):
        space = glocal.HyperSpace(lr=glocal.Log(0.3), class_weights=glocal.Log(torch.tensor([1.0, 2.0, 0.5, 1.5])),
                                  dtype=torch.float64)
        batches, val = data(steps=8)
        h = glocal.hypergradient(mlp(), glocal.optim.SGD(momentum=0.5), space, batches, val, F.cross_entropy,
                                 mode=mode, train_loss=weighted_ce)
        fd = finite_differences(mlp(), glocal.optim.SGD(momentum=0.5), space, batches, val, weighted_ce)
        worst["finite differences"] = max(worst["finite differences"], _relative_error(h, fd))
        print(f"class weights    {mode}: FD {_relative_error(h, fd):.1e}")
    print("worst:", {k: f"{v:.1e}" for k, v in worst.items()})


def compiled() -> None:
    from glocal.hypergrad import ForwardEngine
    from glocal.hypergrad.compiled import CompiledForwardEngine
    from hypergrad.test_compiled import CASES, batches, mlp

    for case in sorted(CASES):
        make_optimizer, make_space = CASES[case]
        eager = ForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
        comp = CompiledForwardEngine(mlp(), make_optimizer(), make_space(), F.cross_entropy)
        loss_error = 0.0
        for batch in batches():
            a, b = eager.step(batch), comp.step(batch)
            loss_error = max(loss_error, abs(a - b) / abs(a))
        pairs = [*zip(eager.tangent_params, comp.tangent_params, strict=True),
                 *zip(eager.tangent_state, comp.tangent_state, strict=True),
                 *zip(eager.fmodel.parameters(), comp.fmodel.parameters(), strict=True)]
        tensor_error = max(float((g.detach() - e.detach()).abs().max() / e.detach().abs().max())
                           for e, g in pairs if e.abs().max() > 0)
        print(f"compiled {case}: loss {loss_error:.1e} relative, tensors {tensor_error:.1e} of their largest entry",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also compiled vs eager (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, "tests")
    exactness()
    if args.compile:
        compiled()


if __name__ == "__main__":
    main()
