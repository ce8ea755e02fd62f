#!/usr/bin/env bash
# Issue 21's training variants on one GPU (docs/quality.md "A better reviewer"): SmolLM2-135M-Instruct on the
# ICLR train split, each measured by dev review NLL (`reviewgpt eval`). The runs train one after the other:
# three at once on one H200 contended for memory (OOM recovery dropped the kept layers) and time, so their
# wall clocks meant nothing (PARALLEL=1 still runs them side by side). Every command is resumable: rerun
# this script after a cut-off call and each run continues where it stopped (finished runs change nothing).
#   M=/tmp/smol D=/tmp/data Q=/tmp/q [VARIANTS="base lora1 full_lr1e-4_2ep"] bash scripts/device/reviewer_runs.sh
# A variant named X_rating is X trained with --review-rating (its reviews end with "Rating: N/10").
set -u
M=${M:-/tmp/smol}; D=${D:-/tmp/data}; Q=${Q:-/tmp/q}
VARIANTS=${VARIANTS:-"base lora1 full_lr1e-4 full_lr5e-5_2ep"}
EXTRA=${EXTRA:-}  # e.g. "--max-steps 3" for a trial on the CPU
mkdir -p "$Q"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rg() { python -m reviewgpt "$@"; }
train=$D/iclr2017_train.jsonl.gz; dev=$D/iclr2017_dev.jsonl.gz

flags_of() {  # variant -> train flags (the recipe's defaults unless named here)
  case $1 in
    lora1) echo "--finetune qlora --learning-rate 1.0e-3 --num-train-epochs 1.0" ;;  # the recipe before full fine-tuning
    shipped) echo "" ;;                                                  # the recipe as it ships (no --eval)
    lora3) echo "--finetune qlora --learning-rate 1.0e-3 --num-train-epochs 3.0 --eval --eval-steps 20" ;;
    full_lr1e-4) echo "--finetune full --learning-rate 1.0e-4 --num-train-epochs 1.0 --eval --eval-steps 15" ;;
    full_lr5e-5_2ep) echo "--finetune full --learning-rate 5.0e-5 --num-train-epochs 2.0 --eval --eval-steps 15" ;;
    full_lr3e-5_3ep) echo "--finetune full --learning-rate 3.0e-5 --num-train-epochs 3.0 --eval --eval-steps 20" ;;
    full_lr1e-4_2ep) echo "--finetune full --learning-rate 1.0e-4 --num-train-epochs 2.0 --eval --eval-steps 15" ;;
    full_lr1e-4_3ep) echo "--finetune full --learning-rate 1.0e-4 --num-train-epochs 3.0 --eval --eval-steps 15" ;;
    full_lr2e-4) echo "--finetune full --learning-rate 2.0e-4 --num-train-epochs 1.0 --eval --eval-steps 15" ;;
    full_lr2e-4_2ep) echo "--finetune full --learning-rate 2.0e-4 --num-train-epochs 2.0 --eval --eval-steps 15" ;;
    lora_speed) echo "--finetune qlora --learning-rate 1.0e-3 --max-steps 20" ;;  # a 4-bit run folder for the speed rows
    *_rating) echo "$(flags_of "${1%_rating}") --review-rating" ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}

evaluate() {  # name model_dir
  rg eval --model "$2" --data "$dev" --batch-tokens 65536 --output "$Q/$1_nll.jsonl" > "$Q/$1_eval.log" 2>&1
  stamp "($1) dev NLL: $(tail -n 1 "$Q/$1_eval.log" | cut -c1-400)"
}

one_variant() {
  local v=$1
  if [ "$v" = base ]; then
    [ -s "$Q/base_nll.jsonl" ] || evaluate base "$M"
  else
    ( rg train --recipe smollm2-135m --model "$M" --data "$train" --output "$Q/$v" $(flags_of "$v") $EXTRA \
        > "$Q/$v.log" 2>&1 && stamp "($v) trained: $(tail -n 1 "$Q/$v.log" | cut -c1-600)" \
        || { stamp "($v) FAILED"; tail -n 5 "$Q/$v.log"; }
      [ -f "$Q/$v/train_summary.json" ] && [ "$v" != lora_speed ] && [ ! -s "$Q/${v}_nll.jsonl" ] && evaluate "$v" "$Q/$v" )
  fi
}

pids=()
for v in $VARIANTS; do
  if [ "${PARALLEL:-0}" = 1 ]; then one_variant "$v" & pids+=($!); else one_variant "$v"; fi
done
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
stamp "all done"
