#!/usr/bin/env bash
# OOM self-recovery on a real GPU (issue 4, item 4): a `reviewgpt train` of the Mistral recipe that
# cannot fit - 64 sequences per micro-batch with every layer kept from recompute, memory check
# off - must recover by itself: first recompute every layer (checkpoint_skip_layers 0), then halve
# the micro-batch (doubling accumulation) until it fits, and finish the optimizer step.
#   OUT=/some/dir bash scripts/device/oom_recovery.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/pydeps .gpuwheels/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/pydeps:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
W=/tmp/weights/reviewgpt-random-mistral-7b
python -c "from reviewgpt.train.bench_models import random_weights; from reviewgpt.train.memory import ARCHITECTURES; \
random_weights(ARCHITECTURES['mistral-7b'], '$W')" 2>&1 | tail -n 1
python bench/long_sample.py /tmp/long.jsonl 128
t0=$(date +%s)
python -m reviewgpt train --recipe mistral-7b-instruct-v0.2 --model $W --data /tmp/long.jsonl --output /tmp/oom \
  --max-steps 1 --save-steps 1 --logging-steps 1 --max-seq-length 12288 --per-device-train-batch-size 64 \
  --gradient-accumulation-steps 1 --checkpoint-skip-layers 32 --no-memory-check > "$OUT/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - t0 )) s"
grep -E "out of memory|retrying|^\{\"output" "$OUT/train.log" | cut -c1-400
cp /tmp/oom/oom_recovery.jsonl /tmp/oom/train_summary.json "$OUT/" 2>/dev/null; cat "$OUT/oom_recovery.jsonl"
