"""What `reviewgpt judge` writes once every judgment is in: verdicts.jsonl (one line per pair:
both orders' winners and reasons, scores, coverage) and summary.json / summary.md (win rates,
intervals, position consistency, coverage; strict JSON, never NaN). Each file is written under a
temporary name and renamed into place, so a kill mid-write leaves the previous file whole.

The counts partition what they count: papers judged = papers with a judged pair;
pairs = judged + unparsable + missing; judgments (two per pair) = from the cache + asked this run,
and = parsable + unparsable + missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from reviewgpt.data.prompt import CRITERIA
from reviewgpt.eval.coverage import covered_criteria
from reviewgpt.eval.judge.data import Pair, ReviewEntry
from reviewgpt.eval.judge.prompt import JUDGE_PROMPT_VERSION, QUESTIONS, Verdict
from reviewgpt.eval.judge.stats import CANDIDATE_POSITION, is_position_consistent, pair_score, summarize
from reviewgpt.files import atomic_path, atomic_write_text


def finite(value):
    """`value` with every NaN or infinity replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _verdict_or_none(entry: dict | None):
    if entry and entry.get("status") == "ok":
        return Verdict.from_dict(entry["verdict"])
    return None


def _coverage_rates(reviews) -> Dict[str, float]:
    unique = {r.review_id: r.review for r in reviews}
    if not unique:
        return dict.fromkeys(CRITERIA, 0.0)
    covered = [covered_criteria(text) for text in unique.values()]
    return {c: sum(cov[c] for cov in covered) / len(covered) for c in CRITERIA}


@dataclass(frozen=True)
class JudgedPairs:
    """What one `reviewgpt judge` run has once every judgment is in: what `write_outputs` writes."""

    pairs: List[Pair]
    per_pair: List[Dict[str, dict]]  # for each pair: order ("AB", "BA") -> its cache entry
    candidates: List[ReviewEntry]
    references: List[ReviewEntry]
    identity: str  # the judge
    candidate_path: str
    reference_path: str
    pairing: str
    paper_chars: int
    limit: Optional[int]
    papers_trimmed: int = 0
    candidate_papers_without_reference: int = 0
    this_run: Optional[dict] = None  # what this run asked and got (judgments_asked/answered/cached, concurrency, ...)


def write_outputs(output_dir: Path, judged: JudgedPairs) -> dict:
    """verdicts.jsonl, summary.json and summary.md of `judged`; returns the summary."""
    from reviewgpt.eval.judge.report import summary_markdown

    stats_input, judged_papers = [], set()
    with atomic_path(output_dir / "verdicts.jsonl") as temporary, open(temporary, "w", encoding="utf-8") as f:
        for pair, orders in zip(judged.pairs, judged.per_pair):
            verdicts = {o: _verdict_or_none(e) for o, e in orders.items()}
            stats_input.append(
                {o: {"status": e.get("status"), "verdict": verdicts[o]} for o, e in orders.items()}
            )
            score = pair_score(verdicts)
            if score is not None:
                judged_papers.add(pair.paper_id)
            line = {
                "paper_id": pair.paper_id,
                "candidate_id": pair.candidate.review_id,
                "reference_id": pair.reference.review_id,
                "judge": judged.identity,
                "prompt_version": JUDGE_PROMPT_VERSION,
                "score": score,
                "criteria_scores": {q: pair_score(verdicts, q) for q in QUESTIONS},
                "position_consistent": is_position_consistent(verdicts),
                "orders": {
                    o: {
                        "candidate_position": CANDIDATE_POSITION[o],
                        "status": e.get("status"),
                        "verdict": e.get("verdict"),
                        "error": e.get("error"),
                        **({"raw": e.get("raw")} if e.get("status") == "unparsable" else {}),
                    }
                    for o, e in orders.items()
                },
                "coverage": {
                    "candidate": covered_criteria(pair.candidate.review),
                    "reference": covered_criteria(pair.reference.review),
                },
            }
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    stats = summarize(stats_input)
    paired_candidates = [p.candidate for p in judged.pairs]
    paired_references = [p.reference for p in judged.pairs]
    summary = {
        "judge": judged.identity,
        "prompt_version": JUDGE_PROMPT_VERSION,
        "candidate": str(judged.candidate_path),
        "reference": str(judged.reference_path),
        "pairing": judged.pairing,
        "paper_chars": judged.paper_chars,
        "limit": judged.limit,
        "candidate_papers": len({c.paper_id for c in judged.candidates}),
        "reference_papers": len({r.paper_id for r in judged.references}),
        "candidate_papers_without_reference": judged.candidate_papers_without_reference,
        "papers_paired": len({p.paper_id for p in judged.pairs}),  # in both files (and within --limit)
        "papers_judged": len(judged_papers),  # with at least one judged pair
        "papers_trimmed_to_judge_context": judged.papers_trimmed,
        **stats.to_dict(),
        **(judged.this_run or {}),
        "coverage": {
            "candidate": _coverage_rates(paired_candidates),
            "reference": _coverage_rates(paired_references),
        },
    }
    # Strict JSON (null, never NaN): Node's JSON.parse and other strict readers refuse a bare NaN.
    atomic_write_text(output_dir / "summary.json", json.dumps(finite(summary), indent=2, allow_nan=False) + "\n")
    atomic_write_text(output_dir / "summary.md", summary_markdown(summary))
    return summary
