#!/usr/bin/env bash
# Issue 13's real-data rows (docs/performance.md, "Speed II: real data"), after bench/device_speed2.sh
# in the same device session (it leaves gemma-7b's random weights in /tmp/weights):
#   gemma-7b (random weights of the real architecture) on the ICLR train split at 8,192 tokens:
#     the reference path (bench/reference_sft.py: formatting_func through trl 0.7.11's SFTTrainer,
#     its defaults) and `reviewgpt train --recipe gemma-7b-it`, same records, 3 steps x 4 records;
#   SmolLM2-135M-Instruct (the real model, /tmp/smol from scripts/device/smollm2_setup.sh) at 8,192:
#     the plain pinned path (bench/plain_loop.py) and the smollm2-135m recipe, with the variants that
#     keep a 135M model's GPU busy (bf16 LoRA instead of 4-bit, no recompute, micro-batch 8); `smol`
#     runs the plain path, the recipe and its former defaults (1 x 16, no layer kept), `smol-variants`
#     the variants too.
# Each row writes its JSON summary to $OUT/realdata/NAME.json; $OUT/realdata.md is the table.
#   OUT=/some/dir bash bench/device_realdata.sh [gemma|smol|smol-variants|all]
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/realdata"
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DATA=${DATA:-/tmp/data/iclr2017_train.jsonl.gz}
SMOL=${SMOL:-/tmp/smol}
GEMMA=${GEMMA:-/tmp/weights/reviewgpt-random-gemma-7b}
WHAT=${1:-all}
RUNS=/tmp/realdata-runs; rm -rf "$RUNS"; mkdir -p "$RUNS"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

ours() {  # NAME ARGS...: one `reviewgpt train` row; its train_summary.json is the row
  local name=$1; shift
  stamp "$name"
  python -m reviewgpt train --output "$RUNS/$name" --data "$DATA" --save-steps 100000 --logging-steps 1 "$@" \
    > "$OUT/realdata/$name.log" 2>&1
  if [ -f "$RUNS/$name/train_summary.json" ]; then cp "$RUNS/$name/train_summary.json" "$OUT/realdata/$name.json"
  else grep -E "Error|error:" "$OUT/realdata/$name.log" | tail -n 3; fi
}

if [ "$WHAT" = gemma ] || [ "$WHAT" = all ]; then
  stamp "gemma-reference"
  python bench/reference_sft.py --model "$GEMMA" --data "$DATA" --output "$RUNS/gemma-reference" --max-steps 3 \
    --gradient-accumulation-steps 4 --logging-steps 1 2> "$OUT/realdata/gemma-reference.log" \
    | tail -n 1 > "$OUT/realdata/gemma-reference.json"
  ours gemma-recipe --recipe gemma-7b-it --model "$GEMMA" --max-steps 3 --gradient-accumulation-steps 4
  ours gemma-recipe-kept0 --recipe gemma-7b-it --model "$GEMMA" --max-steps 3 --gradient-accumulation-steps 4 \
    --checkpoint-skip-layers 0
fi

if [ "$WHAT" != gemma ]; then
  for _ in $(seq 60); do [ -f "$SMOL/config.json" ] && break; sleep 5; done   # built by smollm2_setup.sh
  stamp "smol-plain"
  python bench/plain_loop.py --model "$SMOL" --data "$DATA" --steps 16 2> "$OUT/realdata/smol-plain.log" \
    | tail -n 1 > "$OUT/realdata/smol-plain.json"
  smol="--recipe smollm2-135m --model $SMOL"
  ours smol-recipe $smol --max-steps 4
  ours smol-recipe-1x16-kept0 $smol --max-steps 2 --per-device-train-batch-size 1 --gradient-accumulation-steps 16 \
    --checkpoint-skip-layers 0
fi
if [ "$WHAT" = smol-variants ] || [ "$WHAT" = all ]; then
  ours smol-bf16-norecompute-b8 $smol --max-steps 2 --no-quantize --no-gradient-checkpointing \
    --per-device-train-batch-size 8 --gradient-accumulation-steps 2
  ours smol-4bit-norecompute-b8 $smol --max-steps 2 --no-gradient-checkpointing \
    --per-device-train-batch-size 8 --gradient-accumulation-steps 2
  ours smol-bf16-recompute-b8 $smol --max-steps 2 --no-quantize \
    --per-device-train-batch-size 8 --gradient-accumulation-steps 2
fi

stamp "table"
python - "$OUT/realdata" <<'EOF' | tee "$OUT/realdata.md"
import json, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        rows[f.stem] = json.loads(f.read_text())
    except ValueError:
        rows[f.stem] = {}
print("| row | tokens | seconds | tokens/s | vs its reference | peak allocated GiB |")
print("|---|---|---|---|---|---|")
for name, r in rows.items():
    base = rows.get("gemma-reference" if name.startswith("gemma") else "smol-plain", {})
    ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
             if r.get("tokens_per_s") and base.get("tokens_per_s") else "")
    peak = r.get("peak_allocated_gib") or (r.get("peak_allocated_gib_per_gpu") or [None])[0]
    print(f"| {name} | {r.get('train_tokens')} | {r.get('seconds')} | {r.get('tokens_per_s')} | {ratio} | {peak} |")
EOF
stamp "done"
