#!/usr/bin/env bash
# One device call on a 2-GPU machine (kind nvidia-h100-x2 / h200-x2) for the acceptance items that
# need a GPU outside the speed issue: `reviewgpt doctor` (issue 3), the GPU test (issue 2), the
# judge + needle loop (issue 5), and DDP / DeepSpeed ZeRO-2 vs one GPU on the gemma-7b
# architecture with random weights (issue 6). Results land in $OUT.
#   OUT=/some/dir bash scripts/device/lead.sh
# Needs the pinned wheels in .gpuwheels/ and deepspeed 0.14.4 (sdist) + deps in .gpuwheels-ds/.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-4}; SEQ=${SEQ:-4096}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
pip install -q --no-deps --target /tmp/pydeps .gpuwheels/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pydeps:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

stamp "doctor"
python -m reviewgpt doctor --recipe gemma-7b-it > "$OUT/doctor.txt" 2>&1; echo "doctor exit $?" >> "$OUT/doctor.txt"
tail -n 25 "$OUT/doctor.txt"

stamp "GPU tests (4-bit load + train + merge)"
CUDA_VISIBLE_DEVICES=0 timeout 150 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -n 5

stamp "issue 5: tiny fine-tune -> reviews -> local judge -> needle -> report"
(
  export CUDA_VISIBLE_DEVICES=0
  q=/tmp/loop; rm -rf $q; mkdir -p $q
  python -m reviewgpt quickstart $q/qs > $q/qs.log 2>&1 || tail -n 20 $q/qs.log
  python -m reviewgpt review --model $q/qs/merged --papers $q/qs/sample.jsonl --output $q/qs/run/reviews.jsonl \
    --limit 12 > /dev/null 2>&1
  python -m reviewgpt tiny-model --family gemma --output $q/judge --seed 7 > /dev/null 2>&1
  python -m reviewgpt judge --candidate $q/qs/run/reviews.jsonl --reference $q/qs/sample.jsonl \
    --judge hf:$q/judge --output $q/qs/run/judge 2>&1 | tail -n 12
  python -m reviewgpt tiny-model --family mistral --sliding-window 1024 --layers 2 --output $q/mistral-sw > /dev/null 2>&1
  python -m reviewgpt needle --model $q/mistral-sw --lengths 1024,2048,4096,8192,16384 --depths 0,25,50,75,100 \
    --output $q/qs/run/needle 2>&1 | tail -n 8
  python -m reviewgpt report $q/qs/run 2>&1 | tail -n 3
  cp $q/qs/run/judge/summary.md "$OUT/judge_summary.md" 2>/dev/null
  cp $q/qs/run/needle/needle.csv $q/qs/run/needle/needle_heatmap.png "$OUT/" 2>/dev/null
)

stamp "issue 6: random gemma-7b weights"
python bench/long_sample.py /tmp/long.jsonl 48
python -c "from reviewgpt.train.bench_models import random_weights; from reviewgpt.train.memory import ARCHITECTURES; \
random_weights(ARCHITECTURES['gemma-7b'], '/tmp/gemma7b')" 2>&1 | tail -n 2
common="--recipe gemma-7b-it --model /tmp/gemma7b --data /tmp/long.jsonl --max-steps $STEPS --save-steps 1000 \
 --logging-steps 1 --max-seq-length $SEQ --per-device-train-batch-size 1 --gradient-accumulation-steps 4 --lora-dropout 0.0"
stamp "one GPU"
CUDA_VISIBLE_DEVICES=0 timeout 150 python -m reviewgpt train $common --output /tmp/one 2>&1 | grep -E "^\{|Error|error" | tail -n 3
stamp "DDP, 2 GPUs"
timeout 150 python -m reviewgpt train $common --gpus 2 --output /tmp/ddp 2>&1 | grep -E "^\{|Error|error" | tail -n 3
stamp "ZeRO-2, 2 GPUs (deepspeed 0.14.4: 0.13.1 does not import on this torch)"
DS_BUILD_OPS=0 pip install -q --no-deps --no-build-isolation --target /tmp/dsdeps .gpuwheels-ds/* 2>&1 | tail -n 2
PYTHONPATH=/tmp/dsdeps:$PYTHONPATH timeout 150 python -m reviewgpt train $common --gpus 2 --deepspeed zero2 \
  --output /tmp/zero2 2>&1 | grep -E "^\{|Error|error" | tail -n 3
python scripts/device/scaling.py $((4 * SEQ)) /tmp/one /tmp/ddp /tmp/zero2 | tee "$OUT/scaling.json"
stamp "done"
