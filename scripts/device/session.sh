#!/usr/bin/env bash
# The device calls of issues 20 and 21 (docs/quality.md, docs/performance.md), one stage per call; the
# machine keeps /tmp between back-to-back calls. What each call carries: .gpudata/p1 (GGUF part 1, the
# ICLR data), .gpudata/p2 + .whl (GGUF part 2, the pinned wheels), .gpudata/p3 (GGUF part 3, the local
# build's config/tokenizer files and tensor sums, convert_gguf.py).
#   bash scripts/device/session.sh p1|p2|train|reviews|synthetic      (results: $OUT/*.tar.gz + the tail)
set -u
stage=${1:?stage}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/stash /tmp/data /tmp/q
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for part in .gpudata/*/; do [ -d "$part" ] && cp -r "$part". /tmp/stash/; done
keep() { tar -czf "$OUT/$1.tar.gz" -C /tmp/q --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.pt' \
  --exclude='tokenizer.json' . 2>/dev/null; ls -la "$OUT"; }
case $stage in
  p1) ls -la /tmp/stash; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
  p2)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      $(ls .whl/*.whl | grep -v /gguf-) && touch /tmp/site/.done
    mkdir -p /tmp/gguf_site && python3 -m pip install -q --no-index --no-deps --target /tmp/gguf_site .whl/gguf-*.whl
    python3 -c "import transformers, trl, peft, accelerate, datasets, bitsandbytes; print(transformers.__version__,
trl.__version__, peft.__version__, accelerate.__version__, datasets.__version__, bitsandbytes.__version__)" ;;
  train)
    if [ ! -f /tmp/smol/model.safetensors ]; then
      cat /tmp/stash/gguf.part.* > /tmp/stash/SmolLM2-135M-Instruct.Q4_1.gguf
      PYTHONPATH=/tmp/gguf_site python3 /tmp/stash/convert_gguf.py /tmp/stash /tmp/smol || exit 1
      cp /tmp/stash/iclr2017_*.jsonl.gz /tmp/data/
    fi
    timeout "${BUDGET_S:-540}" bash scripts/device/reviewer_runs.sh; keep train ;;
  reviews)
    timeout 200 bash scripts/device/reviewer_runs.sh   # finishes what a cut-off call left (done runs: nothing)
    timeout "${BUDGET_S:-330}" bash scripts/device/decoding_runs.sh; keep reviews ;;
  speed)
    python -m reviewgpt merge /tmp/q/lora1 --output /tmp/q/lora1_merged > /tmp/q/merge.log 2>&1 || tail -3 /tmp/q/merge.log
    timeout "${BUDGET_S:-540}" python bench/generation_speed.py smol --run /tmp/q/lora1 --merged /tmp/q/lora1_merged \
      --data /tmp/data/iclr2017_train.jsonl.gz ${SPEED_FLAGS:-} | tee /tmp/q/speed_smol.jsonl; keep speed ;;
  synthetic)
    for f in ${FAMILIES:-gemma mistral}; do
      timeout "${BUDGET_S:-270}" python bench/generation_speed.py synthetic --family "$f" --weights-dir /tmp/weights \
        ${SYNTH_FLAGS:-} | tee -a /tmp/q/speed_synthetic.jsonl
    done; keep synthetic ;;
esac
