"""`reviewgpt recipes`: list the built-in recipes and validate each."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recipes",
        help="list and validate the built-in recipes",
        epilog="example:\n  reviewgpt recipes\n  reviewgpt recipes --show gemma-7b-it",
    )
    p.add_argument("--show", metavar="RECIPE", help="print one recipe's resolved fields as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.recipe import builtin_recipes, load_recipe

    if args.show:
        print(json.dumps(load_recipe(args.show).to_dict(), indent=2))
        return 0
    for name in builtin_recipes():
        r = load_recipe(name)  # raises UserError on an invalid recipe
        print(f"{name:28s} family={r.family:8s} template={r.template:17s} max_seq_length={r.max_seq_length:<6d} "
              f"batch={r.per_device_train_batch_size}x{r.gradient_accumulation_steps} finetune={r.finetune}  ok")
    return 0
