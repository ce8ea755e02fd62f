"""`reviewgpt report RUN_DIR`: loss curve, judge summary and needle heatmap on one Markdown page."""

from __future__ import annotations

EXAMPLE = """example:
  reviewgpt report runs/gemma
  reviewgpt report runs/gemma --judge runs/gemma/judge-gpt4 --needle runs/gemma-merged/needle
By default the judge folders are RUN_DIR/judge*/, the score folders RUN_DIR/score*/ and the
needle folder RUN_DIR/needle/;
the page is written to RUN_DIR/report.md with images linked by relative paths."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="one Markdown page with a run's loss curve, judge win rate, scores and needle heatmap",
        epilog=EXAMPLE,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --output folder of `reviewgpt train`")
    p.add_argument("--judge", action="append", metavar="DIR", help="a `reviewgpt judge` output folder (repeatable)")
    p.add_argument("--needle", metavar="DIR", help="a `reviewgpt needle` output folder")
    p.add_argument("--score", action="append", metavar="DIR", help="a `reviewgpt score` output folder (repeatable)")
    p.add_argument("--output", metavar="FILE", help="where to write the page (default: RUN_DIR/report.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    from reviewgpt.eval.report import build_report

    path = build_report(args.run_dir, judge_dirs=args.judge, needle_dir=args.needle, output=args.output,
                        score_dirs=args.score)
    print(f"wrote {path}")
    return 0
