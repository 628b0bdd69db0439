#!/usr/bin/env bash
# Install everything into .venv (first run only) and run the main job: `glocal demo`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
glocal demo "$@"
