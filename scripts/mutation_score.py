"""Mutation score of one module from ``mutmut results --all true``, equivalent mutants excluded.

Usage: python scripts/mutation_score.py MODULE RESULTS_TXT EQUIVALENT_TXT

Score = killed / (mutants run - equivalent ones); mutants not run yet (an interrupted run) are
reported apart. A mutant counts as killed when a test failed
("killed") or the run exceeded its time limit ("timeout": the mutant made the code loop or crawl).
"Survived", "no tests", "suspicious" and "not checked" count against the score. The equivalent list
has one mutant per line, ``name  # reason``; only the names of this module's mutants are used.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

KILLED = {"killed", "timeout"}


def read_results(path: Path) -> dict[str, str]:
    statuses = {}
    for line in path.read_text().splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            statuses[name] = status
    return statuses


def read_equivalent(path: Path) -> dict[str, str]:
    equivalent = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, reason = line.partition("#")
            if name.strip():
                equivalent[name.strip()] = reason.strip()
    return equivalent


def main(module: str, results: Path, equivalent_file: Path) -> int:
    statuses = read_results(results)
    if not statuses:
        print(f"{module}: no mutants recorded (run scripts/mutation.sh {module} first)")
        return 1
    equivalent = {k: v for k, v in read_equivalent(equivalent_file).items() if k in statuses}
    wrongly_equivalent = sorted(k for k in equivalent if statuses[k] in KILLED)
    unchecked = sorted(k for k, v in statuses.items() if v == "not checked")
    counted = {k: v for k, v in statuses.items() if k not in equivalent and v != "not checked"}
    counts = Counter(counted.values())
    killed = sum(counts[s] for s in KILLED)
    total = len(counted)
    print(f"{module}: {len(statuses)} mutants, {len(unchecked)} not run yet, {len(equivalent)} recorded as "
          f"equivalent, {killed}/{total} of the others killed = {100 * killed / max(total, 1):.1f}%  "
          f"({dict(counts)})")
    survivors = sorted(k for k, v in counted.items() if v not in KILLED)
    for name in survivors:
        print(f"  {counted[name]}: {name}")
    for name in wrongly_equivalent:
        print(f"  listed as equivalent but killed (remove it from the list): {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
