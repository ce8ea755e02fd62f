"""`reviewgpt score`: generated reviews against the human ones, without a judge.

Per paper (a candidate review from `reviewgpt review` and every human review of that paper in
the reference file):

- ROUGE-1/2/L F1 by Google's `rouge-score` package (Porter stemming), against the closest human
  review (`score_multi`: the best F1 over the paper's reviews, the usual multi-reference rule);
- coverage: the share of the prompt's 4 criteria the review addresses (`reviewgpt.eval.coverage`);
- repetition: the share of the review's word 4-grams that repeat an earlier one (0 = none, a
  model stuck in a loop approaches 1);
- length: words, and words over the mean words of the paper's human reviews;
- how many reviews ended by themselves (`finish_reason` "stop" in `reviewgpt review`'s rows) and how
  many ran into the new-token limit ("length"): a model that loops never ends by itself.

Means come with 95% bootstrap intervals over papers (1,000 resamples, seeded).

When the candidate reviews give ratings and the reference records carry `rating` (and `decision`):
rating MAE and Spearman against each paper's mean human rating, and accept/reject accuracy, beside a
constant baseline and one human against the others (`reviewgpt.eval.rating`).
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Dict, List, Optional

from reviewgpt.errors import UserError

log = logging.getLogger(__name__)

METRICS = ("rouge1", "rouge2", "rougeL", "coverage", "repetition", "words", "length_ratio")
SCORE_JSON = "score.json"
SCORE_MD = "score.md"
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams that already occurred earlier in the text."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_mean(values: List[float], samples: int = 1000, seed: int = 0) -> tuple:
    """(mean, low, high): the 95% percentile interval of the mean over resampled items."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(samples))
    return mean, means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def read_candidates(path) -> Dict[str, dict]:
    """paper id -> the candidate row (`review` and `paper_id` or `id`), one per paper."""
    from reviewgpt.data.records import json_objects

    candidates: Dict[str, dict] = {}
    for source, obj in json_objects(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("review"), str):
            raise UserError(f"{source}: expected an object with a 'review' string (a line of `reviewgpt review`).")
        paper_id = obj.get("paper_id", obj.get("id"))
        if paper_id is None:
            raise UserError(f"{source}: the row has neither 'paper_id' nor 'id'; scores are matched by paper.")
        if str(paper_id) in candidates:
            raise UserError(f"{source}: a second review of paper {paper_id!r}; keep one review per paper.")
        candidates[str(paper_id)] = {**obj, "source": source}
    if not candidates:
        raise UserError(f"{path}: no reviews in the file.")
    return candidates


def read_references(path) -> Dict[str, List[str]]:
    """paper id -> its human reviews, from a records file."""
    return {pid: [r.review for r in records] for pid, records in reference_records(path).items()}


def reference_records(path) -> Dict[str, list]:
    """paper id -> its human review Records (review, rating, decision), from a records file."""
    from reviewgpt.data.records import load_records

    references: Dict[str, list] = {}
    for record in load_records(path).records:
        references.setdefault(record.paper_id, []).append(record)
    return references


def score_paper(scorer, candidate: str, references: List[str]) -> dict:
    from reviewgpt.eval.coverage import covered_criteria

    rouge = scorer.score_multi(references, candidate)
    covered = covered_criteria(candidate)
    n_words = len(words(candidate))
    reference_words = sum(len(words(r)) for r in references) / len(references)
    return {
        "rouge1": rouge["rouge1"].fmeasure,
        "rouge2": rouge["rouge2"].fmeasure,
        "rougeL": rouge["rougeL"].fmeasure,
        "coverage": sum(covered.values()) / len(covered),
        "criteria": covered,
        "repetition": repetition(candidate),
        "words": n_words,
        "length_ratio": n_words / reference_words if reference_words else 0.0,
    }


def score_reviews(candidate_path, reference_path, output_dir=None, baseline_path=None,
                  accept_threshold: Optional[int] = None) -> dict:
    """Scores of `candidate_path`'s reviews against `reference_path`'s; ratings too when both sides
    have them, the constant baseline and the accept threshold from `baseline_path` (else the
    reference) unless `accept_threshold` is given."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("`reviewgpt score` needs the rouge-score package: pip install rouge-score.") from None
    from tqdm.auto import tqdm

    candidates = read_candidates(candidate_path)
    records = reference_records(reference_path)
    references = {pid: [r.review for r in rs] for pid, rs in records.items()}
    unmatched = sorted(set(candidates) - set(references))
    if unmatched:
        log.warning("%d review(s) have no human review in %s and are not scored, e.g. paper %r",
                    len(unmatched), reference_path, unmatched[0])
    matched = [pid for pid in candidates if pid in references]
    if not matched:
        raise UserError(f"no paper of {candidate_path} is in {reference_path} (papers are matched by 'paper_id'); "
                        "pass the data file the reviews were generated from.")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    papers = []
    for pid in tqdm(matched, desc="scoring", unit="paper", disable=len(matched) < 20):
        row = score_paper(scorer, candidates[pid]["review"], references[pid])
        papers.append({"paper_id": pid, "references": len(references[pid]), **row})
    means = {}
    for metric in METRICS:
        mean, low, high = bootstrap_mean([p[metric] for p in papers])
        means[metric] = {"mean": round(mean, 4), "ci95": [round(low, 4), round(high, 4)] if low is not None else None}
    summary = {
        "candidate": str(candidate_path),
        "reference": str(reference_path),
        "papers": len(papers),
        "unmatched_reviews": len(unmatched),
        "papers_without_review": len(set(references) - set(candidates)),
        "means": means,
        "endings": endings(candidates[pid] for pid in matched),
        "rating": _ratings(candidates, matched, records, reference_path, baseline_path, accept_threshold),
        "per_paper": papers,
    }
    if summary["rating"]:
        rows = summary["rating"].pop("per_paper")
        for paper in papers:
            paper.update(rows[paper["paper_id"]])
    if output_dir:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / SCORE_JSON).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (output_dir / SCORE_MD).write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _ratings(candidates: dict, matched: list, records: dict, reference_path, baseline_path,
             accept_threshold: Optional[int]) -> Optional[dict]:
    """The rating section, or None when no candidate gave a rating or no reference carries one."""
    from reviewgpt.eval.rating import baseline_from, candidate_rating, rating_scores

    predicted = {pid: candidate_rating(candidates[pid], candidates[pid]["source"]) for pid in matched}
    if all(v is None for v in predicted.values()):
        return None
    if not any(r.rating is not None for pid in matched for r in records[pid]):
        log.warning("the reviews give ratings but no reference record of their papers carries a 'rating' 1-10 in "
                    "%s: ratings are not scored", reference_path)
        return None
    if baseline_path:
        from reviewgpt.data.records import load_records

        baseline = baseline_from(load_records(baseline_path).records, str(baseline_path), accept_threshold)
    else:
        log.warning("no --baseline-data: the constant baseline and the accept threshold come from %s itself, "
                    "the data being scored; pass the train split's records", reference_path)
        baseline = baseline_from([r for rs in records.values() for r in rs],
                                 f"{reference_path} (the reference itself: no --baseline-data)", accept_threshold)
    return rating_scores(predicted, {pid: records[pid] for pid in matched}, baseline)


def _cell(stat: dict, percent: bool) -> str:
    scale, fmt = (100.0, "{:.1f}") if percent else (1.0, "{:.2f}")
    text = fmt.format(stat["mean"] * scale)
    if stat["ci95"]:
        text += " (" + fmt.format(stat["ci95"][0] * scale) + "-" + fmt.format(stat["ci95"][1] * scale) + ")"
    return text


def endings(rows) -> Optional[dict]:
    """How the reviews ended: {"ended_by_themselves", "cut_at_the_token_limit", "unknown"}; None when no
    row says (reviews from another tool)."""
    reasons = [row.get("finish_reason") for row in rows]
    if not any(reasons):
        return None
    return {"ended_by_themselves": reasons.count("stop"), "cut_at_the_token_limit": reasons.count("length"),
            "unknown": sum(reason not in ("stop", "length") for reason in reasons)}


def summary_markdown(summary: dict, heading_level: int = 2, title: Optional[str] = None) -> str:
    m = summary["means"]
    lines = [
        f"{'#' * heading_level} {title or 'Scores against the human reviews'}",
        "",
        f"{summary['papers']} papers; candidate `{summary['candidate']}`, reference `{summary['reference']}`. "
        "Means with 95% bootstrap intervals over papers; ROUGE F1, coverage and repetition in %.",
        "",
        "| ROUGE-1 | ROUGE-2 | ROUGE-L | 4-criteria coverage | repeated 4-grams | words | length / human |",
        "|---|---|---|---|---|---|---|",
        f"| {_cell(m['rouge1'], True)} | {_cell(m['rouge2'], True)} | {_cell(m['rougeL'], True)} | "
        f"{_cell(m['coverage'], True)} | {_cell(m['repetition'], True)} | {_cell(m['words'], False)} | "
        f"{_cell(m['length_ratio'], False)} |",
        "",
    ]
    if summary.get("endings"):
        e = summary["endings"]
        lines += [f"Ended by themselves: {e['ended_by_themselves']} of {summary['papers']}; "
                  f"{e['cut_at_the_token_limit']} ran into the new-token limit (a review that loops does).", ""]
    if summary.get("rating"):
        from reviewgpt.eval.rating import rating_markdown

        lines += rating_markdown(summary["rating"])
    if summary["unmatched_reviews"] or summary["papers_without_review"]:
        lines += [f"Not scored: {summary['unmatched_reviews']} review(s) of papers missing from the reference; "
                  f"{summary['papers_without_review']} reference paper(s) have no generated review.", ""]
    return "\n".join(lines)
