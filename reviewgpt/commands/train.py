"""`reviewgpt train`: QLoRA SFT of a recipe on a data file; re-run to resume."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from reviewgpt.cli import HelpFormatter
    from reviewgpt.commands.recipe_flags import add_recipe_flags

    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on paper-review records (re-run the same command to resume)",
        formatter_class=HelpFormatter,
        epilog=(
            "examples:\n"
            "  reviewgpt train --recipe gemma-7b-it --model /models/gemma-7b-it --data papers.jsonl --output runs/g\n"
            "  reviewgpt train --recipe tiny --model runs/tiny-gemma --data sample.jsonl --output runs/tiny\n"
            "  train-mistral --model /models/mistral --data papers.jsonl --output runs/m --max-seq-length 8192"
        ),
    )
    p.add_argument("--recipe", required=True, help="built-in recipe name (see `reviewgpt recipes`) or a YAML file")
    p.add_argument("--data", required=True, help="records: .jsonl or .json with paper/review (or input/output)")
    p.add_argument("--output", required=True, help="run folder: checkpoints, adapter, logs, loss curve")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="resume from this checkpoint folder "
                   "(default: the newest complete checkpoint in --output, if any)")
    p.add_argument("--eval", action="store_true", help="hold out eval_fraction of the papers and evaluate")
    p.add_argument("--skip-invalid", action="store_true",
                   help="set invalid records aside in OUTPUT/rejects.jsonl instead of stopping")
    add_recipe_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.commands.recipe_flags import recipe_overrides
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train import train

    recipe = load_recipe(args.recipe, recipe_overrides(args))
    summary = train(recipe, args.data, args.output, resume_from=args.resume_from, do_eval=args.eval,
                    skip_invalid=args.skip_invalid)
    print(json.dumps(summary))
    return 0
