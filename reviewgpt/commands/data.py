"""`reviewgpt data check|prepare`: validate, count tokens, split by paper, export for LLaMA-Factory."""

from __future__ import annotations

import argparse
import json

from reviewgpt.commands import float_flag, int_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="check, show or prepare a data file",
                              epilog="examples:\n  reviewgpt data check papers.jsonl --recipe gemma-7b-it "
                                     "--tokenizer /models/gemma-7b-it\n  reviewgpt data show papers.jsonl "
                                     "--recipe tiny --tokenizer runs/tiny-gemma\n  reviewgpt data prepare "
                                     "papers.jsonl --output data/")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser(
        "check", help="validate records and count tokens with the recipe's tokenizer and template",
        description="Prints a summary; its last line is one JSON object (records, valid, invalid, duplicates,\n"
                    "papers_truncated, reviews_truncated, max_tokens, ...). Exit 1 when any record is invalid\n"
                    "or any review cannot fit.",
        epilog="example:\n  reviewgpt data check papers.jsonl --recipe mistral-7b-instruct-v0.2 \\\n"
               "      --tokenizer /models/mistral --max-length 12288",
    )
    check.add_argument("file", help="records: .jsonl, .jsonl.gz or .json")
    check.add_argument("--recipe", required=True, help="recipe name or YAML file (template, tokenizer, length)")
    check.add_argument("--tokenizer", help="tokenizer directory (default: the recipe's model)")
    check.add_argument("--max-length", type=int_flag(1),
                       help="tokens per example (default: the recipe's max_seq_length)")
    check.add_argument("--template", help="prompt template (default: the recipe's)")
    check.add_argument("--review-rating", action=argparse.BooleanOptionalAction, default=None,
                       help="count tokens with each review's 'Rating: N/10' line (default: the recipe's review_rating)")
    check.add_argument("--rejects", help="write invalid records here (JSONL with file:line and the error)")
    check.set_defaults(func=run_check)

    show = sub.add_parser(
        "show", help="one training example exactly as the model sees it, the part without loss marked",
        description="Decodes one record's training ids with the recipe's template, tokenizer and length.\n"
                    "The part without loss (labels -100) is shown between <<<no loss>>> and <<</no loss>>>\n"
                    "(in red on a terminal). Also says whether the ids equal the model's own tooling\n"
                    "(apply_chat_template for chat formats, trl's tokenizer(text) for Alpaca texts).\n"
                    'With --json the last line is {"input_ids": [...], "labels": [...]}.',
        epilog="example:\n  reviewgpt data show papers.jsonl --recipe smollm2-135m --tokenizer /models/smollm2 "
               "--index 3",
    )
    show.add_argument("file", help="records: .jsonl, .jsonl.gz or .json")
    show.add_argument("--recipe", required=True, help="recipe name or YAML file (template, length, loss)")
    show.add_argument("--tokenizer", help="tokenizer directory (default: the recipe's model)")
    show.add_argument("--index", type=int, default=0, help="which valid record (0 = the first)")
    show.add_argument("--max-length", type=int, help="tokens per example (default: the recipe's max_seq_length)")
    show.add_argument("--template", help="prompt template (default: the recipe's)")
    show.add_argument("--review-rating", action=argparse.BooleanOptionalAction, default=None,
                      help="end the review with its 'Rating: N/10' line (default: the recipe's review_rating)")
    show.add_argument("--json", action="store_true", help="end with one JSON line of input_ids and labels")
    show.set_defaults(func=run_show)

    prep = sub.add_parser(
        "prepare", help="validate, de-duplicate, split by paper; write JSONL + LLaMA-Factory Alpaca files",
        epilog="examples:\n  reviewgpt data prepare papers.jsonl --output data/ --eval-fraction 0.05\n"
               "  reviewgpt data prepare papers.jsonl --output data/ --tokenizer /models/mistral --max-length 12288",
    )
    prep.add_argument("file", help="records: .jsonl, .jsonl.gz or .json")
    prep.add_argument("--output", required=True, help="folder for train.jsonl, eval.jsonl, paper_review*.json, "
                                                      "dataset_info.json")
    prep.add_argument("--eval-fraction", type=float_flag(0, 1, high_open=True), default=0.05,
                      help="share of papers held out")
    prep.add_argument("--seed", type=int_flag(0), default=42, help="split seed")
    prep.add_argument("--skip-invalid", action="store_true",
                      help="set invalid records aside in OUTPUT/rejects.jsonl instead of stopping")
    lf = prep.add_argument_group("LLaMA-Factory export (its cutoff would cut the review of a long paper)")
    lf.add_argument("--tokenizer", help="the model's tokenizer directory: trim each exported paper so "
                    "LLaMA-Factory's --cutoff_len never reaches the review")
    lf.add_argument("--max-length", type=int_flag(16), help="LLaMA-Factory's --cutoff_len (with --tokenizer)")
    lf.add_argument("--llamafactory-template", choices=["mistral", "gemma", "chatml", "alpaca", "default"],
                    default="mistral", help="LLaMA-Factory's --template the export will be trained with "
                    "(chatml: SmolLM2's format)")
    prep.set_defaults(func=run_prepare)


def _tokenizer_of(recipe, tokenizer_dir, fix: str):
    """The recipe's tokenizer (or --tokenizer's), loaded with the pad policy training uses."""
    from reviewgpt.errors import UserError
    from reviewgpt.models import load_tokenizer

    path = tokenizer_dir or recipe.tokenizer or recipe.model
    if not path:
        raise UserError(f"recipe {recipe.name!r} names no model; pass --tokenizer DIR{fix}.")
    return load_tokenizer(path, recipe.family)


def run_check(args) -> int:
    from reviewgpt.data.check import check_data
    from reviewgpt.recipe import load_recipe

    recipe = load_recipe(args.recipe, {"template": args.template, "review_rating": args.review_rating})
    stats = check_data(args.file, _tokenizer_of(recipe, args.tokenizer, " to count tokens"), recipe.template,
                       args.max_length or recipe.max_seq_length, recipe.name, skip_invalid=True,
                       rejects_path=args.rejects, review_rating=recipe.review_rating)
    print(f"{stats['valid']} valid of {stats['records']} records ({stats['invalid']} invalid, "
          f"{stats['duplicates']} duplicates) over {stats['papers']} papers")
    print(f"tokens with {stats['template']} at max_length {stats['max_length']}: max {stats['max_tokens']}, "
          f"median {stats['median_tokens']}, p90 {stats['p90_tokens']}")
    print(f"{stats['papers_truncated']} paper(s) will be trimmed to fit; {stats['reviews_truncated']} review(s) "
          f"cannot fit at all; plain trl 0.7.11 would cut {stats['reviews_cut_by_plain_trl']} review(s)")
    if stats["reviews_truncated"]:
        print(f"every review fits at --max-seq-length {stats['max_length_for_all_reviews']}, 95% of them at "
              f"{stats['max_length_for_95pct_reviews']} (or pass --on-review-too-long skip to train without the rest)")
    if stats["review_rating"] or stats["ratings"] or stats["ratings_unusable"]:
        print(_ratings_line(stats))
    for error in stats["invalid_examples"]:
        print(f"invalid: {error}")
    if stats["invalid"] > len(stats["invalid_examples"]):
        more = stats["invalid"] - len(stats["invalid_examples"])
        print(f"... and {more} more invalid record(s)" + ("" if args.rejects else "; --rejects FILE lists them all"))
    print(json.dumps(stats))
    return 1 if stats["invalid"] or stats["reviews_truncated"] else 0


def _ratings_line(stats: dict) -> str:
    line = f"{stats['ratings']} of {stats['valid']} record(s) carry a rating 1-10"
    if stats["ratings_unusable"]:
        line += (f" (ratings not an integer 1-10, counted as none: {stats['ratings_unusable']}, e.g. "
                 f"{stats['ratings_unusable_examples'][0]})")
    if stats["review_rating"]:
        return line + f"; review_rating: {stats['ratings_missing']} review(s) will train without a rating line"
    return line + "; review_rating is off: no rating line is trained (--review-rating counts with it)"


def run_show(args) -> int:
    import sys

    from reviewgpt.data.check import show_example
    from reviewgpt.recipe import load_recipe

    recipe = load_recipe(args.recipe, {"template": args.template, "review_rating": args.review_rating})
    shown = show_example(args.file, _tokenizer_of(recipe, args.tokenizer, ""), recipe.template,
                         args.max_length or recipe.max_seq_length, recipe.loss_on, args.index, recipe.review_rating)
    color = sys.stdout.isatty()
    print(f"{shown['source']}: {shown['tokens']} tokens with {shown['template']} at max_length {shown['max_length']}, "
          f"{shown['tokens_with_loss']} with loss; paper {shown['paper_tokens']} -> {shown['paper_kept']} tokens, "
          f"review (with its end) {shown['review_tokens']} tokens")
    print(f"same ids as the model's own tooling: {shown['faithful']}")
    if recipe.review_rating:
        print(f"rating: {shown['rating']}, at the review's end" if shown["rating_line"] else
              "rating: none (the record has no rating 1-10): no rating line")
    print("-" * 80)
    for part in shown["parts"]:
        if part["loss"]:
            print(part["text"], end="")
        elif color:
            print(f"\033[31m{part['text']}\033[0m", end="")
        else:
            print(f"<<<no loss>>>{part['text']}<<</no loss>>>", end="")
    print("\n" + "-" * 80)
    if args.json:
        print(json.dumps({"input_ids": shown["input_ids"], "labels": shown["labels"]}))
    return 0


def run_prepare(args) -> int:
    from reviewgpt.data.prepare import prepare
    from reviewgpt.models import load_tokenizer

    # Loaded only when both flags are given: `prepare` refuses one without the other before any work.
    tokenizer = load_tokenizer(args.tokenizer, "llama") if args.tokenizer and args.max_length else args.tokenizer
    print(json.dumps(prepare(args.file, args.output, args.eval_fraction, args.seed, args.skip_invalid, tokenizer,
                             args.max_length, args.llamafactory_template)))
    return 0
