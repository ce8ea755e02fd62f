#!/usr/bin/env bash
# Issue-4 device call for the speed work after the first grid (docs/performance.md, calls 4-5):
# one model per call, reference path rerun in the same process, per-technique rows, rows with
# layers kept from recompute (memory for speed), and a profile of one step of the recipe's options.
#   OUT=/some/dir MODEL=mistral bash bench/device_speed.sh    # mistral-7b 12K b1 (+ b3)
#   OUT=/some/dir MODEL=gemma bash bench/device_speed.sh      # gemma-7b 8K (+ 12K)
# Needs the pinned wheels in .gpuwheels/ (see docs/performance.md, "Method").
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; MODEL=${MODEL:-mistral}; PROFILE=${PROFILE:-30}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
pip install -q --no-deps --target /tmp/pydeps .gpuwheels/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pydeps:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WEIGHTS=/tmp/weights  # random weights of the real architectures, made once
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$MODEL" = mistral ]; then
  args="--recipe mistral-7b-instruct-v0.2 --seq 12288 --batch ${BATCH:-1,3} --skip-layers ${SKIP:-4,8,16}"
else
  args="--recipe gemma-7b-it --seq ${SEQ:-8192,12288} --batch 1 --skip-layers ${SKIP:-4}"
fi
stamp "bench $args"
python -m reviewgpt bench $args --random-init --weights-dir "$WEIGHTS" --reference ${ABLATE:---ablate} --profile "$PROFILE" \
  --output "$OUT/$MODEL.jsonl" 2>&1 | grep -E '^\{|Error|error|Traceback' | cut -c1-400
stamp "done"
python - "$OUT/$MODEL.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['architecture']:>11} {r['seq']:>6} x{r['batch']} {r['label']:<42} {r.get('tokens_per_s', 0):>8} tok/s "
          f"{r.get('peak_allocated_gib')} GiB (pred {r['predicted']['allocated_gib']}) {r.get('error', '')}")
    for k in r.get("profile_top_kernels", []):
        print(f"    {k['ms']:>9.2f} ms {k['share']:>6.1%} x{k['calls']:<5} {k['kernel'][:90]}")
PY
