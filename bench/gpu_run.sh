#!/usr/bin/env bash
# The GPU check on a bare GPU machine (Python 3.12, torch, transformers, peft; no registry, no Ray,
# no vLLM, no DeepSpeed).  Here, with the registry: `bash bench/gpu_run.sh fetch` downloads
# DeepSpeed's sdist and its pure-Python dependencies into bench/.gpu_wheels (~4 MB, git-ignored);
# carry that folder to the GPU machine and run `bash bench/gpu_run.sh` there: it installs them
# (DeepSpeed with no ops prebuilt), runs bench/gpu_check.py into bench/results/gpu/ and the
# `-m gpu` tests that need no Ray or vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/.gpu_wheels
if [ "${1:-}" = fetch ]; then
  mkdir -p "$WHEELS"
  pip download -q --no-deps -d "$WHEELS" --no-binary deepspeed deepspeed==0.19.8
  pip download -q --no-deps -d "$WHEELS" --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
    hjson py-cpuinfo msgpack ninja einops pydantic pydantic-core annotated-types typing-inspection
  exit 0
fi
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
python -m pip install -q --no-index --find-links "$WHEELS" hjson py-cpuinfo msgpack ninja einops pydantic
python -m pip install -q --no-index --no-deps --no-build-isolation "$WHEELS"/deepspeed-*.tar.gz
python bench/gpu_check.py --out bench/results/gpu "$@"
python -m pytest -q -m gpu -p no:cacheprovider tests/weight_sync/test_gpu.py tests/workers || echo "some -m gpu tests failed"
