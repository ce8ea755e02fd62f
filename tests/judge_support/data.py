"""Candidate and reference review files for judge tests, built from the synthetic sample."""

from __future__ import annotations

import json

from reviewgpt.data.sample import sample_records

CANDIDATE_MARK = "CANDIDATE-REVIEW"
REFERENCE_MARK = "REFERENCE-REVIEW"


def write_review_files(tmp_path, n_papers: int = 3, references_per_paper: int = 1, unreferenced: int = 0):
    """(candidate.jsonl in `reviewgpt review` shape, reference.jsonl in {paper, review} data shape);
    the last `unreferenced` papers have a candidate review but no reference review."""
    records = sample_records(n_papers=n_papers, reviews_per_paper=references_per_paper, seed=3)
    without_reference = {f"paper{i:03d}" for i in range(n_papers - unreferenced, n_papers)}
    candidate, reference = tmp_path / "candidate.jsonl", tmp_path / "reference.jsonl"
    seen = set()
    with open(candidate, "w") as c, open(reference, "w") as r:
        for rec in records:
            if rec["paper_id"] not in without_reference:
                r.write(json.dumps({**rec, "review": f"{REFERENCE_MARK} {rec['review']}"}) + "\n")
            if rec["paper_id"] not in seen:
                seen.add(rec["paper_id"])
                c.write(
                    json.dumps(
                        {
                            "id": rec["paper_id"],
                            "paper_id": rec["paper_id"],
                            "review": f"{CANDIDATE_MARK} Strengths: clear. Weaknesses: small data.",
                        }
                    )
                    + "\n"
                )
    return candidate, reference


def judge_args(candidate, reference, judge: str, output, *extra: str) -> list:
    """`reviewgpt judge` arguments for these files, with `extra` flags after them."""
    return ["judge", "--candidate", str(candidate), "--reference", str(reference), "--judge", judge,
            "--output", str(output), *extra]
