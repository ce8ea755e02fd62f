"""`reviewgpt needle`: needle-in-a-haystack recall over context length x depth (CSV + heatmap)."""

from __future__ import annotations

import json
import sys

from reviewgpt.commands import int_flag

EXAMPLE = """example:
  reviewgpt needle --model runs/mistral-merged --lengths 2048,4096,8192,12288,16384 \\
      --depths 0,10,20,30,40,50,60,70,80,90,100 --output runs/mistral-merged/needle
Writes needle.csv (one row per cell, appended as measured; a rerun resumes) and
needle_heatmap.png (answer loss and retrieval, depth x length). Depth 0% = start of the context."""


def _numbers(kind, what: str):
    """argparse type: '1024,2048' -> [1024, 2048]; anything else is a usage error naming the value."""
    import argparse

    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "needle",
        help="needle-in-a-haystack test: recall and answer loss by context length and depth",
        epilog=EXAMPLE,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="transformers model directory (e.g. merged)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for needle.csv and the heatmap")
    p.add_argument("--lengths", type=_numbers(int, "integers"), default="1024,2048,4096,8192",
                   help="context lengths in tokens, comma-separated")
    p.add_argument("--depths", type=_numbers(float, "numbers"), default="0,25,50,75,100",
                   help="needle depths in percent, comma-separated")
    p.add_argument(
        "--filler",
        metavar="FILE",
        help=".txt, or papers ('paper' field) in .jsonl, .jsonl.gz or .json; default: the built-in synthetic "
             "papers",
    )
    p.add_argument(
        "--attention",
        choices=["sdpa", "eager", "flash_attention_2"],
        default="sdpa",
        help="attention implementation; a sliding window is applied in all three",
    )
    p.add_argument("--needle", help="the sentence to hide (default: a secret number sentence)")
    p.add_argument("--question", help="text after the haystack that asks for the needle")
    p.add_argument("--answer", help="the expected answer, scored and searched in the generation")
    p.add_argument("--max-new-tokens", type=int_flag(1), default=8, help="greedy tokens generated for retrieval")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.errors import UserError
    from reviewgpt.eval.needle import NeedleConfig, run_needle

    overrides = {k: getattr(args, k) for k in ("needle", "question", "answer") if getattr(args, k)}
    try:
        config = NeedleConfig(
            lengths=tuple(args.lengths),
            depths=tuple(args.depths),
            attention=args.attention,
            max_new_tokens=args.max_new_tokens,
            **overrides,
        )
    except ValueError as exc:
        raise UserError(f"invalid needle setting: {exc}; fix --lengths/--depths/--answer.") from None
    result = run_needle(
        args.model, config, args.output, filler_path=args.filler, device=args.device, progress=sys.stderr.isatty()
    )
    print(json.dumps(result))
    return 0
