"""`reviewgpt bench`: timed training steps of a recipe on the GPU; one JSON line per configuration."""

from __future__ import annotations

import json

from reviewgpt.commands import float_flag, int_flag


def _ints(text: str):
    """argparse type: '8192,12288' -> [8192, 12288]; anything else is a usage error naming the value."""
    import argparse

    parts = [x.strip() for x in str(text).split(",") if x.strip()]
    if not all(x.isdigit() and int(x) > 0 for x in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(x) for x in parts]


def _layer_counts(text: str):
    """argparse type: '4,8,auto' -> [4, 8, 'auto']; anything else is a usage error naming the value."""
    import argparse

    parts = [x.strip() for x in str(text).split(",") if x.strip()]
    if not all(x == "auto" or x.isdigit() for x in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of layers or 'auto', got {text!r}")
    return [x if x == "auto" else int(x) for x in parts]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure tokens/s and peak GPU memory of a recipe's training step (and the reference path)",
        epilog=(
            "examples:\n"
            "  reviewgpt bench --recipe gemma-7b-it --seq 12288 --random-init --reference\n"
            "  reviewgpt bench --recipe mistral-7b-instruct-v0.2 --seq 12288 --batch 1,3 --model /models/mistral\n"
            "  reviewgpt bench --recipe gemma-7b-it --seq 8192,12288 --random-init --reference --ablate\n"
            "  reviewgpt bench --recipe mistral-7b-instruct-v0.2 --seq 12288 --random-init \\\n"
            "      --skip-layers 4,8,auto --profile 25\n"
            "  reviewgpt bench --recipe gemma-7b-it --seq 32768 --random-init --skip-layers auto --gpu-mem 24"
        ),
    )
    p.add_argument("--recipe", required=True, help="built-in recipe name or YAML file")
    p.add_argument("--seq", required=True, type=_ints, help="tokens per sequence (comma-separated for several)")
    p.add_argument("--batch", default="1", type=_ints, help="micro-batch size(s), comma-separated")
    p.add_argument("--steps", type=int_flag(1), default=4, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int_flag(0), default=2, help="untimed steps first")
    p.add_argument("--model", help="local model directory (default: the recipe's; see --random-init)")
    p.add_argument("--random-init", action="store_true",
                   help="random weights of the recipe's real architecture, saved once (no hub)")
    p.add_argument("--weights-dir", help="where --random-init keeps its weights (default: the temp folder)")
    p.add_argument("--reference", action="store_true",
                   help="also measure the seed recipe's path (every speed option off), each grid point in a "
                        "fresh process, as the reference measurements did (the first in this one, before "
                        "anything else)")
    p.add_argument("--reference-in-process", action="store_true",
                   help="with --reference: measure every reference grid point in this process, one after "
                        "another on one loaded model (the older way; later rows inherit earlier rows' state)")
    p.add_argument("--ablate", action="store_true",
                   help="also measure each speed technique switched on in turn, and each memory option on top of "
                        "the recipe's (at the first seq/batch)")
    p.add_argument("--skip-layers", default="", type=_layer_counts,
                   help="also measure with this many layers not recomputed (comma-separated, e.g. 4,8,auto; "
                        "auto: as many as the planner says fit, see --gpu-mem)")
    p.add_argument("--gpu-mem", type=float_flag(0, low_open=True), metavar="GIB",
                   help="GPU memory that --skip-layers auto plans for; unset: what is free on the GPU")
    p.add_argument("--profile", type=int_flag(0), default=0, metavar="N",
                   help="profile one extra step of the recipe's options: its N costliest GPU kernels")
    p.add_argument("--no-quantize", action="store_true",
                   help="LoRA on the 16-bit base, as --finetune lora (no bitsandbytes; CPU tries)")
    p.add_argument("--output", help="also append the JSON lines to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.errors import UserError
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.bench import run_bench

    if not args.seq or not args.batch:
        raise UserError("--seq and --batch each need at least one number, e.g. --seq 8192,12288 --batch 1.")

    overrides = {"finetune": "lora"} if args.no_quantize else {}
    recipe = load_recipe(args.recipe, overrides)

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    run_bench(recipe, args.seq, args.batch, steps=args.steps, warmup=args.warmup,
              model_dir=args.model, random_init=args.random_init, reference=args.reference, ablate=args.ablate,
              weights_dir=args.weights_dir, emit=emit, skip_layers=args.skip_layers, profile=args.profile,
              reference_in_process=args.reference_in_process, gpu_mem_gib=args.gpu_mem)
    return 0
