#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent (<= 8 minutes on one H100; prints one table):
#
#   bash benchmarks/gpu_check.sh [--nanogpt PATH]     # or NANOGPT=PATH; without it, no nanoGPT row
#   bash benchmarks/gpu_check.sh --dry                # the same table on this CPU, tiny model (~30 s)
#
# GPT-2 124M (recipes/pretrain/gpt2-124m.yaml's shape) in bf16, eager and torch.compile, AdamW and Muon;
# nanoGPT's train.py on the same shape; Muon's optimizer step; the GPU-marked tests. See
# benchmarks/gpu_check.py for the rows and columns. Needs a CUDA build of torch and the dev extras.
# Writes the table to $OUT/gpu_check.txt (the device tool's output folder) when OUT is set, else ./gpu_check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GPT2KIT_CACHE="${GPT2KIT_CACHE:-$(mktemp -d)}"
report="${OUT:-.}/gpu_check.txt"
tests=--tests
for arg in "$@"; do [[ "$arg" == "--dry" ]] && tests=; done  # the GPU tests only skip on a CPU
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  timeout 450 python benchmarks/gpu_check.py $tests "$@" 2>&1 \
    | grep -v -i "tip:\|LeafSpec\|srun\|available:\|max_steps=\|LOCAL_RANK\|warn"
} 2>&1 | tee "$report"
