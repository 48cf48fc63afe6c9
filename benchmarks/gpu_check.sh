#!/usr/bin/env bash
# One prepared check for a session with a GPU (not run in CI; the device tool runs it from the repo root):
#
#   bash benchmarks/gpu_check.sh            # ~3-5 minutes on an H200
#
# 1. GPT-2 124M shape, bf16-mixed + torch.compile, 300 steps: tokens/s and MFU (target >= 45% on an H200);
# 2. the test suite's GPU tests (pytest -m gpu): 16-mixed and bf16-mixed with and without compile, fused
#    AdamW, the flash SDPA kernel.
# Needs a CUDA build of torch with lightning, jsonargparse, tokenizers, torchmetrics (pip install -e .[dev]).
# Writes its report to $OUT (the device tool's output folder) when set, else ./gpu_check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GPT2KIT_CACHE="${GPT2KIT_CACHE:-$(mktemp -d)}"
report="${OUT:-.}/gpu_check.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  echo "== GPT-2 124M, bf16-mixed + compile"
  timeout 420 python benchmarks/gpu_check.py --steps 300 "$@" 2>&1 | grep -v -i "tip:\|LeafSpec"
  echo "== pytest -m gpu"
  timeout 300 python -m pytest -m gpu -q -p no:cacheprovider tests/ 2>&1 | tail -25
} 2>&1 | tee "$report"
