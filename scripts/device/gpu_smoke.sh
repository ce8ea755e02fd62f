#!/usr/bin/env bash
# A minute on the GPU before the long runs: the smollm2-135m recipe's path (4-bit Llama + the speed
# options + the Llama mask patch) on a tiny Llama built on the spot, then eval / review / merge of that
# run, then the GPU-marked tests. Needs /tmp/site (scripts/device/smollm2_setup.sh).
set -u
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
S=/tmp/smoke; rm -rf $S; mkdir -p $S
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m reviewgpt doctor 2>&1 | tail -n 4
python -m reviewgpt quickstart $S/qs > $S/qs.log 2>&1 || tail -n 20 $S/qs.log   # writes a sample file
python -m reviewgpt tiny-model --family llama --output $S/llama --hidden 96 --layers 2 > /dev/null
stamp "tiny llama, smollm2-135m recipe in 4-bit"
python -m reviewgpt train --recipe smollm2-135m --model $S/llama --data $S/qs/sample.jsonl --output $S/run \
  --max-steps 3 --max-seq-length 1024 --gradient-accumulation-steps 2 2>&1 | tail -n 1 | cut -c1-400
python -m reviewgpt eval --model $S/run --data $S/qs/sample.jsonl --limit 8 2>&1 | tail -n 1 | cut -c1-400
python -m reviewgpt review --model $S/run --papers $S/qs/sample.jsonl --output $S/r.jsonl --limit 8 \
  --max-new-tokens 16 2>&1 | tail -n 1
python -m reviewgpt merge $S/run --output $S/merged 2>&1 | tail -n 1
python -m reviewgpt eval --model $S/merged --data $S/qs/sample.jsonl --limit 8 2>&1 | tail -n 1 | cut -c1-400
stamp "GPU tests"
timeout 200 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_speed_gpu.py tests/test_bench.py 2>&1 | tail -n 5
stamp "done"
