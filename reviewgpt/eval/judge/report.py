"""The judge summary as a short Markdown page (also embedded by `reviewgpt report`)."""

from __future__ import annotations

from reviewgpt.data.prompt import CRITERIA


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _rate(w: dict) -> str:
    if not w.get("n"):
        return "n/a (no judged pairs)"
    return (
        f"{_pct(w['rate'])} (95% CI {_pct(w['low'])}-{_pct(w['high'])}; n={w['n']}: "
        f"{w['wins']} won, {w['ties']} tied, {w['losses']} lost)"
    )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _count_lines(summary: dict) -> list:
    """Papers, pairs and judgments, each counted once; an older summary (without those counts) as it was written."""
    s = summary
    if "papers_paired" not in s:  # its papers_judged counted papers with a pair, judged or not
        return [f"- Papers judged: {s['papers_judged']} (candidate file {s['candidate_papers']}, reference file "
                f"{s['reference_papers']}); pairs {s['pairs']}, judged {s['judged_pairs']}",
                f"- Unparsable judgments: {s['unparsable_judgments']}; missing (rerun to ask): "
                f"{s['missing_judgments']}"]
    lacking = s.get("candidate_papers_without_reference", 0)
    lines = [
        f"- Papers judged: {s['papers_judged']} of the {s['papers_paired']} in both files (candidate file "
        f"{plural(s['candidate_papers'], 'paper')}, reference file {s['reference_papers']})"
        + (f"; {lacking} candidate {'paper has' if lacking == 1 else 'papers have'} no reference review and "
           "cannot be judged" if lacking else "")
        + (f"; at most {s['limit']} pairs (--limit)" if s.get("limit") else ""),
        f"- Pairs: {s['pairs']} (judged {s['judged_pairs']}, unparsable {s['unparsable_pairs']}, "
        f"missing {s['missing_pairs']})",
        f"- Judgments: {s['judgments']} (two per pair): {s['judgments_cached']} from the cache, "
        f"{s['judgments_asked']} asked, {s['judgments_answered']} answered; unparsable "
        f"{s['unparsable_judgments']}; missing {s['missing_judgments']}"
        + (" (rerun the same command to ask them)" if s["missing_judgments"] else ""),
    ]
    if s.get("concurrency_final", 0) < s.get("concurrency", 0):
        lines.append(f"- Requests in flight: lowered from {s['concurrency']} to {s['concurrency_final']} after "
                     f"timeouts (the server queues requests; --concurrency {s['concurrency_final']} next time)")
    if s.get("judge_gone"):
        lines.append(f"- Stopped asking: {s['judge_gone']}")
    return lines


def summary_markdown(summary: dict, heading_level: int = 1) -> str:
    h = "#" * heading_level
    lines = [
        f"{h} Judge: candidate vs reference",
        "",
        f"- Judge: `{summary['judge']}`, prompt `{summary['prompt_version']}`",
        f"- Candidate: `{summary['candidate']}`; reference: `{summary['reference']}` "
        f"(pairing: {summary['pairing']}; paper shown: first {summary['paper_chars']} characters)",
        *_count_lines(summary),
        *([f"- Papers trimmed to the judge model's context: {summary['papers_trimmed_to_judge_context']}"]
          if summary.get("papers_trimmed_to_judge_context") else []),
        "",
        f"**Candidate win rate (ties count half): {_rate(summary['overall'])}**",
        "",
        f"- Position consistency (both orders agree): {_pct(summary['position_consistency'])}",
        f"- Judge picked the first-shown review in {_pct(summary['first_position_preference'])} of decisive "
        "judgments (50% = no position bias)",
        "",
        f"{h}# Per criterion",
        "",
        "| criterion | candidate win rate | 95% CI | candidate covers | reference covers |",
        "|---|---|---|---|---|",
    ]
    for c in CRITERIA:
        w = summary["per_criterion"][c]
        ci = f"{_pct(w['low'])}-{_pct(w['high'])}" if w.get("n") else "n/a"
        lines.append(
            f"| {c} | {_pct(w['rate']) if w.get('n') else 'n/a'} | {ci} | "
            f"{_pct(summary['coverage']['candidate'][c])} | {_pct(summary['coverage']['reference'][c])} |"
        )
    lines += [
        "",
        "Coverage: share of reviews that address the criterion (heading or cue phrase; "
        "`reviewgpt.eval.coverage`).",
        "",
    ]
    return "\n".join(lines)
