#!/usr/bin/env bash
# Mutation testing of the library core with mutmut, one module at a time (docs/testing.md).
#
#   scripts/mutation.sh MODULE [--max-children N]      MODULE: space optim koopman strategies tuner hypergrad
#   scripts/mutation.sh MODULE --score                 only print the score of the last run
#   scripts/mutation.sh MODULE --survivors [--max-children N]   re-test only the last run's survivors
#                                                      (after adding tests; mutmut keeps other results)
#
# Each module runs in its own workspace .mutation/MODULE (a copy of src/, tests/ and pyproject.toml
# with a [tool.mutmut] section naming the files to mutate and the fast, targeted tests that cover
# them), so results are cached per module and re-running after a change only re-tests what changed.
# "Fast" leaves out the statistical tests (tests/koopman/test_koopman_noise.py, the quadratic-task
# strategy comparison): a mutant only they would catch counts as surviving.
# Mutants listed in scripts/mutation_equivalent.txt (with the reason) are excluded from the score.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
module="${1:?usage: scripts/mutation.sh MODULE [--max-children N | --score]}"
shift

case "$module" in
    space)      mutate='"src/glocal/space.py"'
                tests='"tests/test_space.py", "tests/test_space_details.py", "tests/optim", "tests/test_tuner.py"' ;;
    optim)      mutate='"src/glocal/optim/*"'
                tests='"tests/optim"' ;;
    koopman)    mutate='"src/glocal/koopman/*"'
                tests='"tests/koopman/test_koopman_api.py", "tests/koopman/test_koopman_clipping.py",
                       "tests/koopman/test_koopman_exact.py", "tests/koopman/test_koopman_fallbacks.py",
                       "tests/koopman/test_koopman_pydmd.py", "tests/strategies/test_glocal_horizon.py"' ;;
    strategies) mutate='"src/glocal/strategies/*", "src/glocal/outer.py"'
                tests='"tests/strategies", "tests/test_tuner.py", "tests/tuner"' ;;
    tuner)      mutate='"src/glocal/tuner.py", "src/glocal/loop.py"'
                tests='"tests/test_tuner.py", "tests/tuner", "tests/torch_optim", "tests/logging/test_records.py",
                       "tests/strategies/test_glocal_horizon.py"' ;;
    # compiled.py (the torch.compile'd step) is left out: only the slow-marked compile tests reach it
    hypergrad)  mutate='"src/glocal/hypergrad/api.py", "src/glocal/hypergrad/engine.py",
                        "src/glocal/hypergrad/factory.py", "src/glocal/hypergrad/forward.py",
                        "src/glocal/hypergrad/functional.py", "src/glocal/hypergrad/params_engine.py",
                        "src/glocal/hypergrad/plain.py", "src/glocal/hypergrad/reverse.py",
                        "src/glocal/hypergrad/tangents.py"'
                tests='"tests/hypergrad", "tests/test_tuner.py", "tests/tuner", "tests/torch_optim", "tests/amp",
                       "tests/reweighting/test_reweighting_reverse.py"' ;;
    *) echo "scripts/mutation.sh: unknown module '$module'; expected space, optim, koopman, strategies, tuner or hypergrad" >&2
       exit 2 ;;
esac

work="$ROOT/.mutation/$module"
if [ "${1:-}" != "--score" ]; then
    mkdir -p "$work"
    # Fresh copies (mtimes kept: mutmut re-mutates only files whose source changed).
    rm -rf "$work/src" "$work/tests"
    cp -a "$ROOT/src" "$ROOT/tests" "$work/"
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    cp -p "$ROOT/pyproject.toml" "$work/pyproject.toml"
    cat >> "$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["src"]
only_mutate = [$mutate]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x"]
process_isolation = "forkserver"
use_git_change_detection = false
EOF
    cd "$work"
    names=()
    if [ "${1:-}" = "--survivors" ]; then
        shift
        mapfile -t names < <(grep -vE ': (killed|timeout)$' "$work/results.txt" | sed -E 's/^ *([^:]+): .*/\1/')
        echo "re-testing ${#names[@]} surviving mutants"
    fi
    # the mutated copy under mutants/src must be what the tests import, on one thread per worker
    env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        "$PYTHON" -m mutmut run "$@" "${names[@]}" || true
fi
cd "$work"
env -u PYTHONPATH "$PYTHON" -m mutmut results --all true > "$work/results.txt"
"$PYTHON" "$ROOT/scripts/mutation_score.py" "$module" "$work/results.txt" "$ROOT/scripts/mutation_equivalent.txt"
