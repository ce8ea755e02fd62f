#!/usr/bin/env bash
# Issue 13's Triton-kernel call (docs/performance.md, "Speed III: Triton kernels"): on one H200 call,
#   1. bench/triton_kernels.py: each kernel against transformers 4.38.2's ops at gemma-7b 8K and
#      mistral-7b 12K shapes (largest relative difference forward/backward, fwd+bwd milliseconds);
#   2. bench/speed2.py run gemma-triton: the reference (first row of a fresh process), the recipe's
#      defaults (Triton kernels on), the same without them (issue 13's earlier defaults), each kernel
#      off in turn, no layer kept, 32K/64K with checkpoint_offload;
#   3. bench/speed2.py run mistral-triton: reference, defaults, defaults without Triton, none kept;
# then the target table. From the repo root with the pinned wheels at /tmp/site:
#   OUT=/some/dir bash bench/device_speed3.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
HARD_S=${HARD_S:-560}; BUDGET_S=${BUDGET_S:-500}
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WEIGHTS=/tmp/weights  # random weights of the real architectures, made once
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'triton', \
triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', \
bitsandbytes.__version__)" 2>&1 | tail -1
ends="--budget-end $(( t0 + BUDGET_S )) --hard-end $(( t0 + HARD_S ))"

stamp "kernels"
python bench/triton_kernels.py --family gemma --seq 8192 --output "$OUT/kernels.jsonl" 2>&1 | tail -n 4
python bench/triton_kernels.py --family mistral --seq 12288 --output "$OUT/kernels.jsonl" 2>&1 | tail -n 4
for family in ${FAMILIES:-gemma-triton mistral-triton}; do
  stamp "$family"
  python bench/speed2.py run "$family" --weights-dir "$WEIGHTS" --output "$OUT/speed3.jsonl" $ends 2> "$OUT/$family.log" \
    | grep -v -E "^\{'train_runtime'" | cut -c1-200
  grep -E "Traceback|Error|WARNING speed2|auto:|triton" "$OUT/$family.log" | cut -c1-300 | tail -n 8
  rm -rf /tmp/weights/reviewgpt-random-mistral-7b  # disk and page cache; gemma's stay for device_realdata.sh
done
stamp "table"
python bench/speed2.py table "$OUT/speed3.jsonl" | tee "$OUT/table.md"
stamp "done"
