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


def summary_markdown(summary: dict, heading_level: int = 1) -> str:
    h = "#" * heading_level
    lines = [
        f"{h} Judge: candidate vs reference",
        "",
        f"- Judge: `{summary['judge']}`, prompt `{summary['prompt_version']}`",
        f"- Candidate: `{summary['candidate']}`; reference: `{summary['reference']}` "
        f"(pairing: {summary['pairing']}; paper shown: first {summary['paper_chars']} characters)",
        f"- Papers judged: {summary['papers_judged']} "
        f"(candidate file {summary['candidate_papers']}, reference file {summary['reference_papers']}); "
        f"pairs {summary['pairs']}, judged {summary['judged_pairs']}",
        *([f"- Papers trimmed to the judge model's context: {summary['papers_trimmed_to_judge_context']}"]
          if summary.get("papers_trimmed_to_judge_context") else []),
        "",
        f"**Candidate win rate (ties count half): {_rate(summary['overall'])}**",
        "",
        f"- Position consistency (both orders agree): {_pct(summary['position_consistency'])}",
        f"- Judge picked the first-shown review in {_pct(summary['first_position_preference'])} of decisive "
        "judgments (50% = no position bias)",
        f"- Unparsable judgments: {summary['unparsable_judgments']}; missing (rerun to ask): "
        f"{summary['missing_judgments']}",
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
