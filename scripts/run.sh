#!/usr/bin/env bash
# Install (first time) and run a recipe: scripts/run.sh [recipe=NAME] [key=value ...]
# With no arguments it runs the embedded default, recipe=grpo_tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m rlengine.main "$@"
