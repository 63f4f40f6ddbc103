#!/usr/bin/env bash
# Submit an rlengine job:  cluster/slurm/submit.sh recipe=NAME [nodes=N] [gpus_per_node=G] [cpus=C] [-- key=value ...]
# Anything after `--` is passed to rlengine as overrides; other sbatch options via SBATCH_* env vars.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
recipe="" nodes=1 gpus="" cpus=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    recipe=*) recipe=${1#recipe=} ;;
    nodes=*) nodes=${1#nodes=} ;;
    gpus_per_node=*) gpus=${1#gpus_per_node=} ;;
    cpus=*) cpus=${1#cpus=} ;;
    --) shift; break ;;
    *) echo "submit.sh: unknown argument '$1' (overrides go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$recipe" ]] || { echo "submit.sh: recipe=NAME is required" >&2; exit 2; }
args=(--parsable --nodes="$nodes")
[[ -n "$gpus" ]] && args+=(--gpus-per-node="$gpus")
[[ -n "$cpus" ]] && args+=(--cpus-per-task="$cpus")
exec sbatch "${args[@]}" "$here/rlengine.sbatch" "recipe=$recipe" "$@"
