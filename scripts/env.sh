#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with everything installed.
# Sourced by scripts/test.sh and scripts/demo.sh; needs only python3 on the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.glocal-installed"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when the project metadata changed since the last install.
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch is pinned for development and CI: the CPU wheel of 2.13.0 (a looser range would pull a CUDA build).
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" "torch==2.13.0"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
