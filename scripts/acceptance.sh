#!/usr/bin/env bash
# The acceptance learning runs (minutes each; the first also builds the tiny SFT warm start, ~3 min):
# scripts/acceptance.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -m acceptance "$@"
