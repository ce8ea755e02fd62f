"""`reviewgpt merge`: adapter + 16-bit base -> one model folder."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge a trained adapter into its 16-bit base model",
        epilog="example:\n  reviewgpt merge runs/gemma --output runs/gemma-merged --base /models/gemma-7b-it",
    )
    p.add_argument("adapter", help="the run folder written by `reviewgpt train` (or any PEFT adapter folder)")
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.add_argument("--base", help="base model folder (default: the one recorded in adapter_config.json)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="precision the base is loaded and saved in")
    p.add_argument("--base-weights", choices=["auto", "16bit", "nf4"], default="auto",
                   help="16-bit weights the adapter goes into: the checkpoint's (16bit) or their NF4 round trip, "
                        "the weights a QLoRA adapter was trained against (nf4); auto: nf4 for a 4-bit run")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.merge import merge

    out = merge(args.adapter, args.output, base=args.base, dtype=args.dtype, base_weights=args.base_weights)
    print(json.dumps({"merged": str(out)}))
    return 0
