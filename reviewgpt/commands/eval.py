"""`reviewgpt eval`: mean NLL per review token (and perplexity) of human reviews given their papers."""

from __future__ import annotations

import argparse
import json


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="review NLL: how likely the model finds the human reviews of held-out papers",
        description="Mean negative log-likelihood per review token (nats) and perplexity of each record's\n"
                    "review given its paper, in the training layout (template, paper trimmed to --max-length,\n"
                    "review whole). --model is a `reviewgpt train` run folder (its adapter on its base, in 4-bit\n"
                    "when trained so and a GPU is here), a merged model or a base model. The last line is one\n"
                    "JSON object.",
        epilog="examples:\n  reviewgpt eval --model runs/smollm2 --data dev.jsonl.gz\n"
               "  reviewgpt eval --model /models/SmolLM2-135M-Instruct --data dev.jsonl \\\n"
               "      --template smollm2-chatml --max-length 8192",
    )
    p.add_argument("--model", required=True, help="run folder, merged model or base model folder")
    p.add_argument("--data", required=True, help="records with paper and review (.jsonl, .jsonl.gz or .json)")
    p.add_argument("--template", help="prompt template (default: the one the model was trained with, else the "
                                      "chat format its tokenizer carries)")
    p.add_argument("--max-length", type=_positive_int,
                   help="tokens per example (default: the training length, else the model's context)")
    p.add_argument("--limit", type=_positive_int, help="evaluate the first N records only")
    p.add_argument("--batch-tokens", type=_positive_int, default=16384,
                   help="padded tokens per forward pass (lower it on a small GPU)")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--4bit", dest="quantize", action="store_true", default=None,
                       help="load the base in 4-bit NF4 (needs a GPU; default: as the run was trained)")
    quant.add_argument("--no-4bit", dest="quantize", action="store_false", default=None,
                       help="load the base in 16-bit")
    p.add_argument("--output", help="write one JSONL row per record (id, review tokens, NLL) here")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.eval.likelihood import EvalSettings, evaluate_reviews

    settings = EvalSettings(template=args.template, max_length=args.max_length, limit=args.limit,
                            batch_tokens=args.batch_tokens, quantize=args.quantize)
    summary = evaluate_reviews(args.model, args.data, settings, output=args.output)
    ci = summary["nll_ci95"]
    print(f"{summary['records']} reviews of {summary['papers']} papers, {summary['review_tokens']} review tokens: "
          f"NLL {summary['nll']:.4f} nats/token"
          + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
          + f", perplexity {summary['perplexity']:.2f}; {summary['skipped_review_too_long']} skipped (review too "
            f"long), {summary['papers_truncated']} papers trimmed")
    print(json.dumps(summary))
    return 0
