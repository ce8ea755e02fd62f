#!/usr/bin/env bash
# Issue 10's measurement on one GPU (docs/quality.md): SmolLM2-135M-Instruct trained on the ICLR train
# split and evaluated on the dev split, at 8,192 tokens:
#   (a) the base model; (b) the reference path (bench/reference_sft.py); (c) the smollm2-135m recipe with
#   the same optimizer steps and seed; (c2) (c) with the reference's learning rate and schedule; (d) the
#   recipe as shipped (1 epoch).
# For each: dev review NLL (`reviewgpt eval`), reviews of all dev papers (`reviewgpt review`, greedy) and
# their scores (`reviewgpt score`); for (c): NLL of its two merges (--base-weights 16bit / nf4).
# (b), (c), (d) and (a)'s evaluation run at the same time (a 135M model leaves the GPU mostly idle), so
# their tokens/s here are not the clean figures: scripts/device/smollm2_speed.sh measures those.
#   M=/tmp/smol D=/tmp/data Q=/tmp/q STEPS=48 [WITH_D=1] bash scripts/device/quality.sh   (runs until done)
set -u
M=${M:-/tmp/smol}; D=${D:-/tmp/data}; Q=${Q:-/tmp/q}; STEPS=${STEPS:-48}
mkdir -p "$Q"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rg() { python -m reviewgpt "$@"; }
train=$D/iclr2017_train.jsonl.gz; dev=$D/iclr2017_dev.jsonl.gz

stamp "tokenizer check: the smollm2-135m layout equals SmolLM2's own apply_chat_template"
rg data show "$dev" --recipe smollm2-135m --tokenizer "$M" --max-length 30000 --index 0 > "$Q/data_show.txt" 2>&1
sed -n 2p "$Q/data_show.txt"

stamp "start (b) reference, (c) and (c2) recipe x $STEPS steps, [(d) recipe 1 epoch], (a) eval + review"
python bench/reference_sft.py --model "$M" --data "$train" --output "$Q/b" --max-steps "$STEPS" \
  --lora-target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj > "$Q/b.log" 2>&1 &
pb=$!
# (c) and (c2) as measured for issue 10: micro-batch 1 x 16, every layer recomputed (the recipe took
# 8 x 2 with kept layers for speed afterwards, issue 13; same effective batch of 16).
AS_MEASURED="--per-device-train-batch-size 1 --gradient-accumulation-steps 16 --checkpoint-skip-layers 0"
rg train --recipe smollm2-135m --model "$M" --data "$train" --output "$Q/c" --max-steps "$STEPS" \
  --save-steps 1000 $AS_MEASURED > "$Q/c.log" 2>&1 &
pc=$!
pd=
if [ "${WITH_D:-0}" = 1 ]; then
  rg train --recipe smollm2-135m --model "$M" --data "$train" --output "$Q/d" --save-steps 1000 > "$Q/d.log" 2>&1 &
  pd=$!
fi
# (c2): (c) with the reference's optimizer settings: what the layout alone buys.
rg train --recipe smollm2-135m --model "$M" --data "$train" --output "$Q/c2" --max-steps "$STEPS" --save-steps 1000 \
  --learning-rate 2.0e-4 --lr-scheduler-type constant --warmup-ratio 0.03 $AS_MEASURED > "$Q/c2.log" 2>&1 &
pc2=$!
( rg eval --model "$M" --data "$dev" --max-length 8192 --batch-tokens 65536 --output "$Q/a_nll.jsonl" \
    > "$Q/a_eval.log" 2>&1
  rg review --model "$M" --papers "$dev" --output "$Q/a_reviews.jsonl" --batch-size 39 --max-new-tokens 1024 \
    --max-input-tokens 7168 > "$Q/a_review.log" 2>&1
  rg score --candidate "$Q/a_reviews.jsonl" --reference "$dev" --output "$Q/a_score" > "$Q/a_score.log" 2>&1
  stamp "(a) done" ) &
pa=$!

after_training() {  # name: eval (4-bit adapter as trained), review, score
  local n=$1
  rg eval --model "$Q/$n" --data "$dev" --batch-tokens 65536 --output "$Q/${n}_nll.jsonl" > "$Q/${n}_eval.log" 2>&1
  rg review --model "$Q/$n" --papers "$dev" --output "$Q/${n}_reviews.jsonl" --batch-size 39 > "$Q/${n}_review.log" 2>&1
  rg score --candidate "$Q/${n}_reviews.jsonl" --reference "$dev" --output "$Q/${n}_score" > "$Q/${n}_score.log" 2>&1
  stamp "($n) evaluated"
}
merges() {
  for w in 16bit nf4; do
    rg merge "$Q/c" --output "$Q/c_merged_$w" --base-weights "$w" > "$Q/c_merge_$w.log" 2>&1
    rg eval --model "$Q/c_merged_$w" --data "$dev" --batch-tokens 65536 > "$Q/c_merged_${w}_eval.log" 2>&1
  done
  stamp "(c) merges evaluated"
}
wait $pc; stamp "(c) trained: $(tail -n 1 "$Q/c.log" | cut -c1-300)"
( after_training c; merges ) &
p2=$!
wait $pb; stamp "(b) trained: $(tail -n 1 "$Q/b.log" | cut -c1-300)"
after_training b &
p3=$!
wait $pc2; stamp "(c2) trained"
rg eval --model "$Q/c2" --data "$dev" --batch-tokens 65536 --output "$Q/c2_nll.jsonl" > "$Q/c2_eval.log" 2>&1 &
p4=$!
if [ -n "$pd" ]; then wait $pd; stamp "(d) trained"; after_training d; fi
wait $pa $p2 $p3 $p4
stamp "all done"
touch "$Q/DONE"
