#!/usr/bin/env bash
# Install everything into .venv (first run only) and run the linter and the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check src tests benchmarks
python -m pytest "$@"
