#!/usr/bin/env bash
# Install (first time) and run the test suite: scripts/test.sh [pytest args]
# Default: everything but the GPU tests (-m gpu needs CUDA). Quick subset: scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
