"""`reviewgpt plan`: predicted peak GPU memory per micro-batch, before loading anything."""

from __future__ import annotations

import json

from reviewgpt.commands import float_flag, int_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="predict peak GPU memory for batch sizes 1..N and recommend micro-batch + grad accumulation",
        epilog=(
            "examples:\n"
            "  reviewgpt plan --recipe gemma-7b-it --seq 12288 --gpu-mem 24\n"
            "  reviewgpt plan --recipe mistral-7b-instruct-v0.2 --seq 12288 --gpu-mem 48 --max-batch 4 --json"
        ),
    )
    p.add_argument("--recipe", required=True, help="built-in recipe name or YAML file")
    p.add_argument("--seq", type=int_flag(1), help="tokens per sequence (default: the recipe's max_seq_length)")
    p.add_argument("--gpu-mem", type=float_flag(0, low_open=True), required=True, help="GPU memory in GiB")
    p.add_argument("--max-batch", type=int_flag(1), default=8, help="largest micro-batch to consider")
    p.add_argument("--headroom", type=float_flag(0, 1, high_open=True), default=0.05,
                   help="share of GPU memory kept free")
    p.add_argument("--model", help="local model directory (its config.json gives the architecture)")
    p.add_argument("--reference", action="store_true", help="plan the seed recipe's path (speed options off)")
    p.add_argument("--json", action="store_true", help="print one JSON object (every part of the prediction)")
    p.set_defaults(func=run)


def format_plan(result: dict) -> str:
    """The plan as a person reads it: one row per micro-batch, then the flags to pass."""
    lines = [f"{result['recipe']} ({result['architecture']}, {result['path']} path) at {result['seq']} tokens on a "
             f"{result['gpu_mem_gib']:g} GiB GPU: {result['usable_gib']:g} GiB usable",
             f"{'micro-batch':>11}  {'allocated GiB':>13}  {'reserved GiB':>12}  fits"]
    for row in result["batches"]:
        lines.append(f"{row['batch']:>11}  {row['allocated_gib']:>13.2f}  {row['reserved_gib']:>12.2f}  "
                     f"{'yes' if row['fits'] else 'no'}")
    rec = result["recommendation"]
    if rec is None:
        lines.append("no micro-batch fits: use a shorter --seq (--max-seq-length), keep the speed options on, "
                     "or a larger GPU")
    else:
        flags = (f"--per-device-train-batch-size {rec['per_device_train_batch_size']} "
                 f"--gradient-accumulation-steps {rec['gradient_accumulation_steps']}")
        if "checkpoint_skip_layers" in rec:
            flags += f" --checkpoint-skip-layers {rec['checkpoint_skip_layers']}"
        lines.append(f"recommended: {flags} (effective batch {rec['effective_batch_size']}; up to "
                     f"{rec['largest_batch_that_fits']} fits)")
    return "\n".join(lines)


def run(args) -> int:
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.plan import plan

    recipe = load_recipe(args.recipe, {"model": args.model})
    result = plan(recipe, args.seq or recipe.max_seq_length, args.gpu_mem, args.max_batch, args.headroom,
                  reference=args.reference)
    print(json.dumps(result) if args.json else format_plan(result))
    return 0 if result["recommendation"] else 3
