"""`reviewgpt tiny-model`: a tiny random Gemma, Mistral or Llama, built locally, for CPU tries."""

from __future__ import annotations

import json

from reviewgpt.commands import int_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tiny-model", help="build a tiny random model of a real architecture (no download)",
        epilog="example:\n  reviewgpt tiny-model --family gemma --output runs/tiny-gemma",
    )
    p.add_argument("--family", choices=["gemma", "mistral", "llama"], default="gemma",
                   help="architecture (llama: shaped like SmolLM2-Instruct, ChatML tokenizer)")
    p.add_argument("--output", required=True, help="folder to write the model and tokenizer to")
    p.add_argument("--hidden", type=int_flag(8), default=64, help="hidden size (a multiple of 8)")
    p.add_argument("--layers", type=int_flag(1), default=2, help="decoder layers")
    p.add_argument("--sliding-window", type=int_flag(1), help="Mistral's attention window (default: none)")
    p.add_argument("--seed", type=int_flag(0), default=0, help="weight seed")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.errors import UserError
    from reviewgpt.models.tiny import build_tiny_model

    if args.hidden % 8:
        raise UserError(f"--hidden must be a multiple of 8 (4 attention heads of an even size), got {args.hidden}.")

    out = build_tiny_model(args.family, args.output, seed=args.seed, hidden=args.hidden, layers=args.layers,
                           sliding_window=args.sliding_window)
    print(json.dumps({"model": str(out), "family": args.family}))
    return 0
