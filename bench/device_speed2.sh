#!/usr/bin/env bash
# Issue 13's device call (docs/performance.md, "Speed II"): in one call of ~8 minutes on an H200,
# the reference path (BASELINE.md's method: the first row of a fresh process) and ours with the new
# options, each option its own row:
#   mistral-7b 12288 b1: reference, recipe defaults (checkpoint_skip_layers auto), skip_layers 0
#   gemma-7b    8192 b1: reference, recipe defaults (auto), skip_layers 0; a probe of transformers
#                        4.38.2's causal mask at 12288 (what slowed the in-process 12K reference)
#   gemma-7b   32768 b1: no layer kept + checkpoint_offload / lean_mlp / both (+ neither, time permitting)
#   gemma-7b   65536 b1: no layer kept + checkpoint_offload + lean_mlp (+ each alone, time permitting)
#   gemma-7b   12288 b1: the reference in a fresh process, time permitting (REF12K=1)
# then the target table (ratio, GiB reserved, planner prediction and error). Run from the repo root
# with the pinned wheels installed at /tmp/site:
#   OUT=/some/dir bash bench/device_speed2.sh
# Raw JSON lines: $OUT/speed2.jsonl; logs: $OUT/*.log; the table: $OUT/table.md.
# On a CPU, to test this script: TINY_GEMMA=dir TINY_MISTRAL=dir (tiny models; sequences / 256).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-480}   # optional rows start only before this; no row starts after HARD_S
HARD_S=${HARD_S:-560}
REF12K=${REF12K:-1}
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WEIGHTS=/tmp/weights  # random weights of the real architectures, made once
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, transformers, peft, trl, bitsandbytes; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, \
'bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1
ends="--budget-end $(( t0 + BUDGET_S )) --hard-end $(( t0 + HARD_S ))"

stamp "mistral-7b"
tiny=""; [ -n "${TINY_MISTRAL:-}" ] && tiny="--tiny $TINY_MISTRAL"
python bench/speed2.py run mistral --weights-dir "$WEIGHTS" --output "$OUT/speed2.jsonl" $ends $tiny 2> "$OUT/mistral.log" \
  | grep -v -E "^\{'train_runtime'" | cut -c1-200
grep -E "Traceback|Error|WARNING speed2|auto:" "$OUT/mistral.log" | cut -c1-300 | tail -n 8
rm -rf /tmp/weights/reviewgpt-random-mistral-7b   # disk and page cache for gemma

stamp "gemma-7b"
more=""; [ "$REF12K" = 1 ] && more="--fresh-reference 12288"
tiny=""; [ -n "${TINY_GEMMA:-}" ] && tiny="--tiny $TINY_GEMMA"
python bench/speed2.py run gemma --weights-dir "$WEIGHTS" --output "$OUT/speed2.jsonl" $ends $more $tiny 2> "$OUT/gemma.log" \
  | grep -v -E "^\{'train_runtime'" | cut -c1-200
grep -E "Traceback|Error|WARNING speed2|auto:|offload" "$OUT/gemma.log" | cut -c1-300 | tail -n 8

stamp "table"
scale=1; [ -n "${TINY_GEMMA:-}" ] && scale=256
python bench/speed2.py table "$OUT/speed2.jsonl" --scale $scale | tee "$OUT/table.md"
stamp "done"
