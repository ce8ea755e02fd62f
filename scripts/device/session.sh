#!/usr/bin/env bash
# The device calls of issues 20 and 21 (docs/quality.md, docs/performance.md), one stage per call; the
# machine keeps /tmp between back-to-back calls. What each call carries: .gpudata/p1 (GGUF part 1, the
# ICLR data), .gpudata/p2 + .whl (GGUF part 2, the pinned wheels), .gpudata/p3 (GGUF part 3, the local
# build's config/tokenizer files and tensor sums, convert_gguf.py).
#   bash scripts/device/session.sh p1|p2|train|reviews|speed|check|synthetic  (results: $OUT/*.tar.gz + the tail)
# train: the variants one after the other; reviews: finishes a cut-off train, then trains the run of
# lowest dev NLL again with --review-rating and reviews dev with base, best and best_rating; speed: the
# 4-bit run folder lora_speed and its merge; check: the greedy token check on the base model
# (DTYPES="float32 bfloat16").
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
  train|check|speed)
    if [ ! -f /tmp/smol/model.safetensors ]; then
      cat /tmp/stash/gguf.part.* > /tmp/stash/SmolLM2-135M-Instruct.Q4_1.gguf
      PYTHONPATH=/tmp/gguf_site python3 /tmp/stash/convert_gguf.py /tmp/stash /tmp/smol || exit 1
      cp /tmp/stash/iclr2017_*.jsonl.gz /tmp/data/
    fi ;;&
  check)  # greedy tokens, fast engine vs transformers' generate, on the base model in fp32 and bf16
    for dtype in ${DTYPES:-float32 bfloat16}; do
      timeout "${BUDGET_S:-120}" python bench/generation_speed.py smol --merged /tmp/smol --only-check --check-dtype $dtype \
        --data /tmp/data/iclr2017_train.jsonl.gz 2>/dev/null | grep '^{' | tee -a /tmp/q/token_check.jsonl
    done; cp /tmp/q/token_check.jsonl "$OUT/" ;;
  train)
    export VARIANTS=${VARIANTS:-"base lora_speed full_lr1e-4_2ep full_lr2e-4 full_lr2e-4_2ep full_lr1e-4_3ep"}
    timeout "${BUDGET_S:-540}" bash scripts/device/reviewer_runs.sh; keep train ;;
  reviews)
    export VARIANTS=${VARIANTS:-"base lora_speed full_lr1e-4_2ep full_lr2e-4 full_lr2e-4_2ep full_lr1e-4_3ep"}
    timeout "${TRAIN_S:-150}" bash scripts/device/reviewer_runs.sh   # finishes what a cut-off call left
    best=${BEST:-$(python3 -c "
import json, pathlib
nll = {}
for log in [l for l in pathlib.Path('/tmp/q').glob('full*_eval.log') if '_rating' not in l.name]:
    for line in log.read_text(errors='replace').splitlines():
        try: nll[log.name[:-len('_eval.log')]] = json.loads(line[line.find('{'):])['nll']
        except (ValueError, KeyError, TypeError): pass
print(min(nll, key=nll.get) if nll else '')")}
    echo "best by dev NLL: ${best:?no finished variant}"
    VARIANTS="${best}_rating" timeout 200 bash scripts/device/reviewer_runs.sh
    MODELS="best=/tmp/q/$best" DECODINGS=${DECODINGS:-"default s_rp1.05 s_nr6 nr4 greedy"} \
      timeout "${BUDGET_S:-300}" bash scripts/device/decoding_runs.sh &
    MODELS="base=/tmp/smol" DECODINGS="sample0.7 s_rp1.05 s_nr6" timeout "${BUDGET_S:-300}" bash scripts/device/decoding_runs.sh &
    MODELS="best_rating=/tmp/q/${best}_rating" DECODINGS=default timeout "${BUDGET_S:-300}" bash scripts/device/decoding_runs.sh
    wait; echo "$best" > /tmp/q/best.txt; keep reviews ;;
  speed)
    run=/tmp/q/${SPEED_RUN:-lora_speed}
    [ -f "${run}_merged/config.json" ] || python -m reviewgpt merge "$run" --output "${run}_merged" > /tmp/q/merge.log 2>&1 \
      || tail -3 /tmp/q/merge.log
    # The Triton kernel's tiles, each candidate timed alone (bench/decode_kernel.py); then the rows with
    # the shipped tiles, and the merged row again with the tiles chosen here (TILED=0: not).
    [ "${TILED:-1}" = 1 ] && timeout 200 python bench/decode_kernel.py --write-best /tmp/q/tiles.json \
      | tee "$OUT/kernel_tiles.jsonl" | grep -v '"max_error"'
    timeout "${BUDGET_S:-400}" python bench/generation_speed.py smol --run "$run" --merged "${run}_merged" \
      --data /tmp/data/iclr2017_train.jsonl.gz ${SPEED_FLAGS:-} | tee /tmp/q/speed_smol.jsonl
    [ -f /tmp/q/tiles.json ] && timeout 150 python bench/generation_speed.py smol --merged "${run}_merged" \
      --data /tmp/data/iclr2017_train.jsonl.gz --forms merged --engines fast --skip-check \
      --kernel-tiles /tmp/q/tiles.json | tee -a /tmp/q/speed_smol.jsonl
    cp /tmp/q/speed_smol.jsonl "$OUT/"
    keep speed ;;
  synthetic)
    for f in ${FAMILIES:-gemma mistral}; do
      timeout "${BUDGET_S:-270}" python bench/generation_speed.py synthetic --family "$f" --weights-dir /tmp/weights \
        ${SYNTH_FLAGS:-} 2>/tmp/q/synthetic_$f.log | tee -a "$OUT/speed_synthetic.jsonl"  # in $OUT: a cut call keeps its rows
    done ;;
esac
