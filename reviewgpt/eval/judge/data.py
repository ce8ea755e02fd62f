"""Review files in, judged pairs out.

A review file is JSONL (or a JSON list): `reviewgpt review` output (`id`, `paper_id`, `review`,
...) or a data file (`paper` + `review`, or `input` + `output`). A review's paper is its
`paper_id`, else its `id`, else a hash of its paper text - the same rule `reviewgpt review` uses,
so generated reviews and the data they came from match up.

Several reviews per paper (ICLR papers have ~3): each candidate review is judged against the
*first* reference review of its paper in file order (`pairing="first"`, cost linear in the
candidates and reproducible), or against every reference review (`pairing="all"`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from reviewgpt.errors import UserError

PAIRINGS = ("first", "all")


@dataclass(frozen=True)
class ReviewEntry:
    paper_id: str
    review_id: str
    review: str
    paper: str = ""  # the paper text when the file carries it
    source: str = ""  # "file:line"


@dataclass(frozen=True)
class Pair:
    paper_id: str
    candidate: ReviewEntry
    reference: ReviewEntry
    paper: str = ""


def load_reviews(path) -> List[ReviewEntry]:
    from reviewgpt.data.records import json_objects, text_digest

    path = Path(path)
    entries = []
    for source, obj in json_objects(path):
        if not isinstance(obj, dict):
            raise UserError(f"{source}: expected a JSON object with 'review', got {type(obj).__name__}.")
        review = obj.get("review", obj.get("output"))
        if not isinstance(review, str):
            raise UserError(
                f"{source}: field 'review' (or 'output') is missing or not text; every line needs "
                "the review to judge."
            )
        paper = obj.get("paper", obj.get("input", ""))
        paper = paper if isinstance(paper, str) else ""
        if "paper_id" in obj or "id" in obj:
            paper_id = str(obj.get("paper_id", obj.get("id")))
        elif paper:
            paper_id = "paper-" + text_digest(paper)
        else:
            raise UserError(
                f"{source}: no 'paper_id', 'id' or 'paper' to tell which paper this review is "
                "of; add a 'paper_id' field."
            )
        review_id = str(obj.get("id", f"{paper_id}#{len(entries)}"))
        entries.append(
            ReviewEntry(paper_id=paper_id, review_id=review_id, review=review, paper=paper, source=source)
        )
    if not entries:
        raise UserError(f"{path}: the file holds no reviews.")
    return entries


def load_paper_texts(path) -> Dict[str, str]:
    """{paper_id: paper text} from a data file, so the judge sees the paper (`--papers FILE`)."""
    from reviewgpt.data.records import load_papers

    return {p.id: p.paper for p in load_papers(path)}


def by_paper(entries: List[ReviewEntry]) -> Dict[str, List[ReviewEntry]]:
    grouped: Dict[str, List[ReviewEntry]] = OrderedDict()
    for entry in entries:
        grouped.setdefault(entry.paper_id, []).append(entry)
    return grouped


def make_pairs(
    candidates: List[ReviewEntry],
    references: List[ReviewEntry],
    pairing: str = "first",
    papers: Dict[str, str] | None = None,
) -> List[Pair]:
    """Candidate-vs-reference pairs for the papers in both lists, in the candidates' order."""
    if pairing not in PAIRINGS:
        raise UserError(
            f"pairing {pairing!r} is not one of {', '.join(PAIRINGS)}; pass --pairing first or all."
        )
    papers = papers or {}
    references_by_paper = by_paper(references)
    pairs = []
    for candidate in candidates:
        refs = references_by_paper.get(candidate.paper_id, [])
        for reference in refs[:1] if pairing == "first" else refs:
            paper = papers.get(candidate.paper_id) or candidate.paper or reference.paper
            pairs.append(Pair(candidate.paper_id, candidate, reference, paper))
    return pairs
