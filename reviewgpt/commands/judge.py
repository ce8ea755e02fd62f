"""`reviewgpt judge`: pairwise win rate of candidate reviews against reference reviews."""

from __future__ import annotations

import sys

from reviewgpt.commands import float_flag, int_flag

EXAMPLE = """example:
  # a paid API (key from $OPENAI_API_KEY), as the reference recipe did with GPT-4:
  reviewgpt judge --candidate runs/gemma/reviews.jsonl --reference data/eval.jsonl \\
      --judge openai:gpt-4-1106-preview --output runs/gemma/judge
  # any OpenAI-compatible server (vLLM, llama.cpp), or a local model directory:
  reviewgpt judge ... --judge openai:Qwen2-72B-Instruct --base-url http://localhost:8000/v1
  reviewgpt judge ... --judge hf:models/judge-model --output runs/gemma/judge-local
A rerun with the same arguments asks only the judgments not yet cached in --output.
Win rate: ties count half; 95% Wilson interval over papers."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "judge",
        help="pairwise LLM-judge win rate of candidate vs reference reviews (cached, resumable)",
        epilog=EXAMPLE,
    )
    p.add_argument(
        "--candidate",
        required=True,
        metavar="FILE",
        help="JSONL of reviews to evaluate (e.g. `reviewgpt review` output)",
    )
    p.add_argument(
        "--reference",
        required=True,
        metavar="FILE",
        help="JSONL of reviews to compare against (e.g. the eval data, {paper, review} lines)",
    )
    p.add_argument(
        "--judge",
        required=True,
        metavar="SPEC",
        help="openai:MODEL (chat-completions API) or hf:DIR (local transformers model)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for verdicts, cache and summary")
    p.add_argument(
        "--papers",
        metavar="FILE",
        help="data file with the papers' text (default: the 'paper' field of either review file, if present)",
    )
    p.add_argument(
        "--pairing",
        choices=["first", "all"],
        default="first",
        help="several reference reviews per paper: judge against the first one, or against all",
    )
    p.add_argument("--paper-chars", type=int_flag(0), default=6000,
                   help="characters of the paper the judge sees (0: none)")
    p.add_argument("--limit", type=int_flag(1), help="judge at most this many pairs")
    p.add_argument("--parse-retries", type=int_flag(0), default=2, help="re-asks of an answer not in the asked format")
    p.add_argument("--retry-unparsable", action="store_true", help="re-ask judgments cached as unparsable")
    api = p.add_argument_group("openai:MODEL judges")
    api.add_argument("--base-url", default="https://api.openai.com/v1", help="API root of any OpenAI-compatible server")
    api.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="environment variable holding the API key (the key itself is never written or logged)",
    )
    api.add_argument("--concurrency", type=int_flag(1), default=4, help="requests in flight at once")
    api.add_argument("--timeout", type=float_flag(0, low_open=True), default=120.0,
                     help="seconds to wait for one answer")
    api.add_argument("--max-retries", type=int_flag(0), default=6, help="retries on 429, 5xx, timeouts")
    api.add_argument("--backoff", type=float_flag(0), default=2.0,
                     help="first retry wait in seconds; doubles each time")
    api.add_argument("--max-tokens", type=int_flag(1), default=1024, help="longest judge answer")
    api.add_argument("--json-mode", choices=["off", "object", "schema"], default="off",
                     help="ask the server for JSON output (response_format): object = JSON mode, schema = the "
                     "verdict's JSON Schema (constrains small judges that answer in prose)")
    api.add_argument("--max-connection-failures", type=int_flag(1), default=3, metavar="N",
                     help="connection errors in a row after which the judge counts as gone and the run stops "
                     "(a rerun asks only the missing judgments)")
    local = p.add_argument_group("hf:DIR judges")
    local.add_argument(
        "--local-mode",
        choices=["loglik", "generate"],
        default="loglik",
        help="loglik: forced choice of A/B/tie by log-probability (always parsable); "
        "generate: free generation parsed like an API answer",
    )
    local.add_argument("--max-new-tokens", type=int_flag(1), default=768, help="generate mode: answer length limit")
    local.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def make_backend(args):
    from reviewgpt.errors import UserError

    kind, _, target = args.judge.partition(":")
    if not target or kind not in ("openai", "hf"):
        raise UserError(
            f"--judge {args.judge!r} is not a judge spec; pass openai:MODEL (e.g. "
            "openai:gpt-4-1106-preview) or hf:DIR (a local model directory)."
        )
    if kind == "openai":
        from reviewgpt.eval.judge.client import ChatCompletionsClient, HTTPJudgeConfig

        return ChatCompletionsClient(
            HTTPJudgeConfig(
                model=target,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                timeout_s=args.timeout,
                max_retries=args.max_retries,
                backoff_s=args.backoff,
                max_tokens=args.max_tokens,
                json_mode=args.json_mode,
                max_connection_failures=args.max_connection_failures,
            )
        )
    from reviewgpt.eval.judge.local import LocalJudge, LocalJudgeConfig

    return LocalJudge(
        LocalJudgeConfig(model_dir=target, mode=args.local_mode, max_new_tokens=args.max_new_tokens, device=args.device)
    )


def run(args) -> int:
    from reviewgpt.errors import UserError
    from reviewgpt.eval.judge.run import JudgeRunConfig, run_judge

    try:
        config = JudgeRunConfig(
            output_dir=args.output,
            pairing=args.pairing,
            paper_chars=args.paper_chars,
            concurrency=args.concurrency,
            parse_retries=args.parse_retries,
            retry_unparsable=args.retry_unparsable,
            limit=args.limit,
        )
        backend = make_backend(args)  # its configs check their values too (ValueError)
    except ValueError as exc:
        raise UserError(f"invalid judge setting: {exc}; fix the flag.") from None
    try:
        summary = run_judge(
            args.candidate, args.reference, backend, config, papers_path=args.papers, progress=sys.stderr.isatty()
        )
    except KeyboardInterrupt:
        from reviewgpt.eval.judge.cache import CACHE_FILE

        # The run stopped at once (requests in flight are abandoned); each verdict was cached as it arrived.
        print(f"reviewgpt judge: interrupted; the verdicts that arrived are kept in {args.output}/{CACHE_FILE}, "
              "and the same command asks only the rest.", file=sys.stderr)
        return 130
    print(last_line(summary, args.output))
    if summary["unparsable_judgments"] and args.judge.startswith("openai:") and args.json_mode == "off":
        print("reviewgpt judge: some answers were not the JSON asked for; --json-mode object (or schema) asks "
              "the server for JSON output, and --retry-unparsable asks those judgments again.", file=sys.stderr)
    if summary["missing_judgments"]:
        why = f"stopped: {summary['judge_gone']}" if summary.get("judge_gone") else "judge unreachable after retries"
        print(
            f"reviewgpt judge: {summary['missing_judgments']} judgments got no answer "
            f"({why}); rerun the same command to ask only those.",
            file=sys.stderr,
        )
        return 1
    return 0


def last_line(summary: dict, output) -> str:
    """The run in one line, with the counts summary.json and summary.md give."""
    from reviewgpt.eval.judge.report import plural

    w = summary["overall"]
    rate = "n/a" if not w["n"] else f"{100 * w['rate']:.1f}% (95% CI {100 * w['low']:.1f}-{100 * w['high']:.1f}%)"
    trimmed = summary.get("papers_trimmed_to_judge_context")
    lowered = summary["concurrency_final"] < summary["concurrency"]
    papers = plural(summary["papers_judged"], "paper")
    return (
        f"candidate win rate {rate} over {plural(w['n'], 'judged pair')} ({papers}); "
        f"judgments: {summary['judgments_asked']} asked, {summary['judgments_answered']} answered, "
        f"{summary['judgments_cached']} from the cache; {summary['unparsable_judgments']} unparsable, "
        f"{summary['missing_judgments']} missing; "
        + (f"{trimmed} paper(s) trimmed to the judge's context; " if trimmed else "")
        + (f"concurrency lowered to {summary['concurrency_final']} after timeouts; " if lowered else "")
        + f"summary in {output}/summary.md"
    )
