#!/usr/bin/env bash
# What CI leaves out: the acceptance learning runs (minutes each; the first also builds the tiny SFT
# warm start, ~5 min) and the long end-to-end variants marked slow (more fault injections, every
# transport, 1/2/3 engines, multi-node, SLURM requeue).  scripts/acceptance.sh [pytest args];
# -m acceptance or -m slow for one of the two.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -m "acceptance or slow" "$@"
