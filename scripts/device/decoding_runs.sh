#!/usr/bin/env bash
# Issue 20's decoding table on one GPU (docs/quality.md "Decoding"): one review per dev paper under each
# decoding, for each model, scored against the papers' human reviews. Models run at the same time; each
# (model, decoding) writes its own reviews file, so a rerun after a cut-off call skips what is done.
#   M=/tmp/smol D=/tmp/data Q=/tmp/q MODELS="base=/tmp/smol lora1=/tmp/q/lora1" bash scripts/device/decoding_runs.sh
set -u
M=${M:-/tmp/smol}; D=${D:-/tmp/data}; Q=${Q:-/tmp/q}
MODELS=${MODELS:-"base=$M"}
DECODINGS=${DECODINGS:-"greedy rp1.1 rp1.2 rp1.3 nr4 rp1.1_nr6 sample0.7"}
EXTRA=${EXTRA:-}
mkdir -p "$Q/dec"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rg() { python -m reviewgpt "$@"; }
dev=$D/iclr2017_dev.jsonl.gz

flags_of() {
  case $1 in
    greedy) echo "--repetition-penalty 1.0 --no-repeat-ngram-size 0 --temperature 0" ;;
    rp1.1) echo "--repetition-penalty 1.1 --no-repeat-ngram-size 0 --temperature 0" ;;
    rp1.2) echo "--repetition-penalty 1.2 --no-repeat-ngram-size 0 --temperature 0" ;;
    rp1.3) echo "--repetition-penalty 1.3 --no-repeat-ngram-size 0 --temperature 0" ;;
    nr4) echo "--repetition-penalty 1.0 --no-repeat-ngram-size 4 --temperature 0" ;;
    rp1.1_nr6) echo "--repetition-penalty 1.1 --no-repeat-ngram-size 6 --temperature 0" ;;
    rp1.05_nr6) echo "--repetition-penalty 1.05 --no-repeat-ngram-size 6 --temperature 0" ;;
    s_rp1.05) echo "--repetition-penalty 1.05 --no-repeat-ngram-size 0 --temperature 0.7 --top-p 0.9 --seed 0" ;;
    s_nr6) echo "--repetition-penalty 1.0 --no-repeat-ngram-size 6 --temperature 0.7 --top-p 0.9 --seed 0" ;;
    s_rp1.1_nr6) echo "--repetition-penalty 1.1 --no-repeat-ngram-size 6 --temperature 0.7 --top-p 0.9 --seed 0" ;;
    sample0.7) echo "--repetition-penalty 1.1 --no-repeat-ngram-size 0 --temperature 0.7 --top-p 0.9 --seed 0" ;;
    default) echo "" ;;  # the model's recipe's generation block
    *) echo "unknown decoding $1" >&2; return 1 ;;
  esac
}

one_model() {  # name dir
  local n=$1 m=$2
  for d in $DECODINGS; do
    local out=$Q/dec/${n}__${d}
    rg review --model "$m" --papers "$dev" --output "$out.jsonl" --max-new-tokens 1024 --max-input-tokens 7168 \
      $(flags_of "$d") $EXTRA > "$out.review.log" 2>&1 || { stamp "($n $d) review FAILED"; tail -n 3 "$out.review.log"; }
    # the train split is the constant baseline's data (mean rating, majority decision) for runs that rate
    rg score --candidate "$out.jsonl" --reference "$dev" --baseline-data "$D/iclr2017_train.jsonl.gz" \
      --output "$out.score" > "$out.score.log" 2>&1
    stamp "($n $d) $(tail -n 1 "$out.review.log" | cut -c1-300)"
  done
}

pids=()
for pair in $MODELS; do
  one_model "${pair%%=*}" "${pair#*=}" &
  pids+=($!)
done
wait "${pids[@]}"
stamp "all done"
