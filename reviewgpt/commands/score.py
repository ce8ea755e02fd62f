"""`reviewgpt score`: ROUGE, 4-criteria coverage, repetition and length of generated reviews, and their
ratings against the humans' when both sides have them."""

from __future__ import annotations

import json

from reviewgpt.commands import int_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="ROUGE-1/2/L, criteria coverage, repetition and length of reviews vs the human ones",
        # A description is printed as written (no %-formatting, unlike help strings): one % here.
        description="Scores each generated review against every human review of its paper (matched by\n"
                    "paper_id): ROUGE F1 (rouge-score, best over the paper's reviews), coverage of the 4\n"
                    "criteria, share of repeated word 4-grams, words and length ratio; means with 95% bootstrap\n"
                    "intervals. When the reviews end with a rating ('Rating: N/10', the `rating` of `review`'s\n"
                    "rows) and the reference records carry 'rating'/'decision': rating MAE and Spearman against\n"
                    "each paper's mean human rating and accept/reject accuracy, beside a constant baseline\n"
                    "(--baseline-data) and one human against the others. Writes score.json and score.md to\n"
                    "--output; the last line printed is one JSON object (without the per-paper rows).",
        epilog="example:\n  reviewgpt score --candidate runs/s/reviews.jsonl --reference dev.jsonl "
               "--output runs/s/score \\\n      --baseline-data train.jsonl.gz",
    )
    p.add_argument("--candidate", required=True, help="reviews from `reviewgpt review` (JSONL: paper_id, review)")
    p.add_argument("--reference", required=True, help="records with the human reviews (.jsonl, .jsonl.gz or .json)")
    p.add_argument("--output", help="folder for score.json and score.md (`reviewgpt report` shows RUN/score)")
    p.add_argument("--baseline-data", help="records of the training split (with 'rating', 'decision'): the "
                   "constant baseline's mean rating and majority decision, and the accept threshold (default: "
                   "the reference itself, which flatters the baseline)")
    p.add_argument("--accept-threshold", type=int_flag(1, 10),
                   help="a rating >= this predicts accept (default: the rating that best separates the baseline "
                        "data's accepted and rejected papers, one review at a time)")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.eval.score import score_reviews, summary_markdown

    summary = score_reviews(args.candidate, args.reference, args.output, args.baseline_data, args.accept_threshold)
    print(summary_markdown(summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_paper"}))
    return 0
