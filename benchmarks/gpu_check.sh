#!/usr/bin/env bash
# One prepared check for a session with a GPU (not run in CI; the device tool runs it from the repo root):
#
#   bash benchmarks/gpu_check.sh            # ~3-5 minutes on an H200
#
# 1. GPT-2 124M shape, bf16-mixed + torch.compile, 300 steps: tokens/s and MFU (target >= 45% on an H200);
# 2. the test suite's GPU tests (pytest -m gpu): 16-mixed and bf16-mixed with and without compile, fused
#    AdamW, the flash SDPA kernel;
# 3. recipes/chat/gpt2-topical-chat.yaml for real: GPT-2 small from hf:gpt2 (the hub cache; where the
#    machine has no network and no cached GPT-2, a random GPT-2 small with the real vocabulary is put in
#    a private hub cache, so the shapes and speed are real but the replies are not), 200 steps bf16-mixed,
#    then `evaluate` (shakespeare_mc, 200 questions) and one `chat` reply. Needs GPT2KIT_DATA (or a
#    network) for topical-chat and gpt2-bpe; the HF extras (pip install -e .[eval]).
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
  echo "== recipes/chat/gpt2-topical-chat.yaml from hf:gpt2"
  run="$(mktemp -d)"
  if ! timeout 120 python -c "from gpt2kit.interop.hub import resolve_checkpoint; resolve_checkpoint('hf:gpt2')" 2>/dev/null; then
    export HF_HOME="$run/hf_home" HF_HUB_OFFLINE=1
    python -c "
import os, sys; sys.path.insert(0, 'tests')
from pathlib import Path
from gpt2kit.corpora import fetch_corpus
from hubcache import build_hub_cache
build_hub_cache(Path(os.environ['HF_HOME']), fetch_corpus('gpt2-bpe').parent,
                sizes=dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024))
print('no GPT-2 in the hub cache and no network: random GPT-2 small weights, the real vocabulary')"
  fi
  start=$(date +%s)
  (cd "$run" && timeout 600 python -m gpt2kit fit --config "$OLDPWD/recipes/chat/gpt2-topical-chat.yaml" \
      --trainer.max_steps 200 --trainer.val_check_interval 100 --trainer.precision bf16-mixed \
      --trainer.accelerator gpu --trainer.devices 1 --trainer.enable_progress_bar false 2>&1 \
      | grep -v -i "tip:\|LeafSpec" | tail -15)
  echo "fit: $(( $(date +%s) - start )) s"
  ckpt="$run/runs/chat-gpt2-topical/checkpoints/last.ckpt"
  tail -3 "$run"/runs/chat-gpt2-topical/logs/version_0/metrics.csv 2>/dev/null
  timeout 300 python -m gpt2kit evaluate --ckpt "$ckpt" --tasks shakespeare_mc --limit 200 --device cuda \
      --dtype bfloat16 --batch_size 32 2>&1 | tail -8
  timeout 120 python -m gpt2kit chat --ckpt "$ckpt" --message "Do you like football?" --device cuda 2>&1 | tail -3
} 2>&1 | tee "$report"
