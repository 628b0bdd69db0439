#!/usr/bin/env bash
# The one-line bugs of issue 16 that the suite once let through: apply each to a copy of the
# repository and run the targeted tests; each must now fail ("caught"). Usage: scripts/planted_bugs.sh
set -u
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
PYTHON="${PYTHON:-python}"
check() {  # name file python-old python-new tests...
    local name=$1 file=$2 old=$3 new=$4; shift 4
    rm -rf "$WORK"/copy && mkdir -p "$WORK"/copy && cp -a "$SRC"/src "$SRC"/tests "$SRC"/pyproject.toml "$WORK"/copy/
    "$PYTHON" - "$WORK" "$file" "$old" "$new" <<'PY'
import sys
work, p, old, new = sys.argv[1:5]
p = work + "/copy/" + p
s = open(p).read()
assert s.count(old) == 1, (p, old, s.count(old))
open(p, "w").write(s.replace(old, new))
PY
    (cd "$WORK"/copy && PYTHONPATH=$PWD/src "$PYTHON" -m pytest -q -x -p no:cacheprovider "$@" > "$WORK"/$name.log 2>&1)
    if [ $? -eq 0 ]; then echo "SURVIVED: $name"; else echo "caught: $name ($(grep -m1 -E '^FAILED' "$WORK"/$name.log))"; fi
}
check horizon src/glocal/strategies/glocal.py "rows_ahead = round(remaining / self.record_every)" "rows_ahead = remaining" tests/strategies tests/test_tuner.py tests/tuner
check fallback_counter src/glocal/loop.py "self.fallbacks += int(estimate.fell_back)" "self.fallbacks += 0" tests/test_tuner.py tests/tuner tests/strategies
check eig_clipping src/glocal/koopman/dmd.py "        lam = clip_modulus(self.eigenvalues, max_modulus)" "        lam = np.asarray(self.eigenvalues, dtype=np.complex128)" tests/koopman tests/strategies
check clip_all src/glocal/loop.py "if self.clip_norm is not None and norm > self.clip_norm:" "if self.clip_norm is not None:" tests/test_tuner.py tests/tuner
check adam_ignored_defaults src/glocal/defaults.py 'return torch.optim.Adam([raw], lr=lr)' 'return torch.optim.SGD([raw], lr=lr)' tests/test_cli.py tests/test_cli_runs.py
check adam_ignored_cli src/glocal_bench/cli.py '"hyper_optimizer": args.hyper_optimizer,' '' tests/test_cli.py tests/test_cli_runs.py
check default_estimator src/glocal/defaults.py 'KOOPMAN: dict[str, Any] = {"model": "affine", "fallback": "weighted"}' 'KOOPMAN: dict[str, Any] = {"model": "affine", "fallback": "holdout"}' tests/strategies tests/test_tuner.py tests/tuner
