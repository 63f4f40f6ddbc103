#!/usr/bin/env bash
# Install (first time) and run the test suite: scripts/test.sh [pytest args]
# Default: everything but the GPU tests (-m gpu needs CUDA). Quick subset: scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
# The SLURM tests start real munge/slurmctld/slurmd daemons: as root, install them when missing
# (without them those tests skip, saying why).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v slurmctld >/dev/null 2>&1; then
  echo "installing slurm-wlm, munge and shellcheck (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge shellcheck >/dev/null \
    || echo "apt-get install failed: the SLURM tests will be skipped" >&2
fi
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
