#!/usr/bin/env bash
# The issue-4 GPU measurement, in one device call (docs/performance.md shows its results):
#   reference path vs reviewgpt for gemma-7b 8K/12K b1 and mistral-7b 12K b1/b3, per-technique
#   rows (ABLATE=1), the core issue's `reviewgpt train` QLoRA run of the gemma-7b-it recipe, GPU tests.
# Run from the repository root on the GPU device with the pinned wheels carried in .gpuwheels/:
#   OUT=/some/dir bash bench/device_grid.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ABLATE=${ABLATE:-1}; TRAIN=${TRAIN:-1}; PYTESTS=${PYTESTS:-1}
pip install -q --no-deps --target /tmp/pydeps .gpuwheels/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pydeps:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WEIGHTS=/tmp/weights  # random weights of the real architectures, made once
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
ab=""; [ "$ABLATE" = 1 ] && ab="--ablate"
t0=$(date +%s)
python -m reviewgpt bench --recipe gemma-7b-it --random-init --weights-dir "$WEIGHTS" --seq 8192,12288 --reference $ab \
  --output "$OUT/bench.jsonl" 2>&1 | grep -v Warning | tail -n 30
echo "gemma done after $(( $(date +%s) - t0 )) s"
python -m reviewgpt bench --recipe mistral-7b-instruct-v0.2 --random-init --weights-dir "$WEIGHTS" --seq 12288 --batch 1,3 --reference $ab \
  --output "$OUT/bench.jsonl" 2>&1 | grep -v Warning | tail -n 30
echo "mistral done after $(( $(date +%s) - t0 )) s"
if [ "$TRAIN" = 1 ]; then
  python bench/long_sample.py /tmp/long.jsonl 16
  python bench/train_probe.py "$OUT/train.json" -- train --recipe gemma-7b-it \
    --model /tmp/weights/reviewgpt-random-gemma-7b --data /tmp/long.jsonl --output /tmp/run \
    --max-steps 3 --save-steps 3 --max-seq-length 8192 --logging-steps 1 2>&1 | tail -n 15
  echo "train done after $(( $(date +%s) - t0 )) s"
fi
if [ "$PYTESTS" = 1 ]; then
  timeout 120 python -m pytest -m gpu -q -p no:cacheprovider tests/test_bench.py tests/test_speed_gpu.py 2>&1 | tail -n 15
fi
echo "all done after $(( $(date +%s) - t0 )) s"
