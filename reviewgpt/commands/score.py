"""`reviewgpt score`: ROUGE, 4-criteria coverage, repetition and length of generated reviews."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="ROUGE-1/2/L, criteria coverage, repetition and length of reviews vs the human ones",
        # A description is printed as written (no %-formatting, unlike help strings): one % here.
        description="Scores each generated review against every human review of its paper (matched by\n"
                    "paper_id): ROUGE F1 (rouge-score, best over the paper's reviews), coverage of the 4\n"
                    "criteria, share of repeated word 4-grams, words and length ratio; means with 95% bootstrap\n"
                    "intervals. Writes score.json and score.md to --output; the last line printed is one JSON\n"
                    "object (without the per-paper rows).",
        epilog="example:\n  reviewgpt score --candidate runs/s/reviews.jsonl --reference dev.jsonl "
               "--output runs/s/score",
    )
    p.add_argument("--candidate", required=True, help="reviews from `reviewgpt review` (JSONL: paper_id, review)")
    p.add_argument("--reference", required=True, help="records with the human reviews (.jsonl, .jsonl.gz or .json)")
    p.add_argument("--output", help="folder for score.json and score.md (`reviewgpt report` shows RUN/score)")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.eval.score import score_reviews, summary_markdown

    summary = score_reviews(args.candidate, args.reference, args.output)
    print(summary_markdown(summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_paper"}))
    return 0
