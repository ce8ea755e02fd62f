#!/usr/bin/env bash
# ZeRO-2 on 2 GPUs alone (issue 6), with the whole log kept: OUT=/dir bash scripts/device/zero2.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; STEPS=${STEPS:-4}; SEQ=${SEQ:-4096}
pip install -q --no-deps --target /tmp/pydeps .gpuwheels/*.whl 2>&1 | grep -v "root" | tail -2
DS_BUILD_OPS=0 pip install -q --no-deps --no-build-isolation --target /tmp/dsdeps .gpuwheels-ds/* 2>&1 | grep -v root | tail -2
export PYTHONPATH=/tmp/dsdeps:/tmp/pydeps:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -c "import deepspeed, torch; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__)" 2>&1 | tail -3
[ -f /tmp/long.jsonl ] || python bench/long_sample.py /tmp/long.jsonl 48
python -c "from reviewgpt.train.bench_models import random_weights; from reviewgpt.train.memory import ARCHITECTURES; \
random_weights(ARCHITECTURES['gemma-7b'], '/tmp/gemma7b')" 2>&1 | tail -n 2
common="--recipe gemma-7b-it --model /tmp/gemma7b --data /tmp/long.jsonl --max-steps $STEPS --save-steps 1000 \
 --logging-steps 1 --max-seq-length $SEQ --per-device-train-batch-size 1 --gradient-accumulation-steps 4 --lora-dropout 0.0"
timeout 200 python -m reviewgpt train $common --gpus 2 --deepspeed zero2 --output /tmp/zero2 > "$OUT/zero2.log" 2>&1
echo "exit $?"
grep -v "it/s\]\|s/it\]" "$OUT/zero2.log" | grep -iE "error|exception|raise|File \"|^\{" | grep -v "^\s*$" | tail -n 40
python scripts/device/scaling.py $((4 * SEQ)) /tmp/zero2 | tee "$OUT/zero2_scaling.json"
