"""`reviewgpt score`'s ratings: a generated review's rating against the humans'.

Per paper, the candidate's rating (its row's `rating`, from `review`; a row without the key is parsed
from its text with `reviewgpt.data.rating.parse_rating`) is compared with the **mean rating of the
paper's human reviews** in the reference file:

- MAE (mean absolute error, rating points) and Spearman's rank correlation over papers;
- accept/reject accuracy: the rating >= the accept threshold predicts accept, against the paper's
  `decision` (`decision_accepted`: "Accept (...)" is accept; "Reject" and "Invite to Workshop Track"
  are reject).

Each beside a constant prediction made from **baseline data** (`--baseline-data`, the train split;
without it, the reference itself, said in the output): its mean review rating (MAE; Spearman of a
constant is undefined: null) and its majority decision (accuracy). The accept threshold is the
integer rating that best separates the baseline data's accepted from rejected papers when used on
one review's rating (ties: the lower), unless `--accept-threshold` gives one; on ICLR 2017's train
split that is 7 (81.0% of its reviews; 6 gives 77.3%).

The human ceiling: each human rating of a paper with two or more against the mean of that paper's
other human ratings (MAE, Spearman), and its own accept/reject accuracy at the same threshold.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from reviewgpt.data.rating import RATING_MAX, RATING_MIN, decision_accepted, parse_rating, usable_rating
from reviewgpt.errors import UserError


@dataclass(frozen=True)
class Baseline:
    """What a constant predictor knows, from the baseline data."""

    source: str  # the file, or "the reference (no --baseline-data)"
    mean_rating: float
    majority_accept: Optional[bool]  # None: no decisions in the baseline data
    accept_threshold: int
    threshold_from: str  # "--accept-threshold" or "baseline data"


def candidate_rating(row: dict, source: str) -> Optional[int]:
    """A candidate row's rating: its `rating` (an integer 1-10 or null), else parsed from its review."""
    if "rating" not in row:
        return parse_rating(row.get("review", ""))
    value = row["rating"]
    if value is not None and (usable_rating(value) is None or isinstance(value, str)):
        raise UserError(f"{source}: 'rating' must be an integer {RATING_MIN}-{RATING_MAX} or null, got {value!r}.")
    return usable_rating(value)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for k in range(start, stop + 1):
            ranks[order[k]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Spearman's rho (Pearson's r of the tie-averaged ranks); None when undefined (fewer than two
    pairs, or one side constant)."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs pairs")
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = mean(rx), mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def accept_threshold(pairs: Sequence[tuple]) -> int:
    """The integer t in 1-10 for which `rating >= t` agrees most often with accept, over (rating,
    accepted) pairs; ties go to the lower t."""
    def agreement(t: int) -> int:
        return sum((rating >= t) == accepted for rating, accepted in pairs)

    return max(range(RATING_MIN, RATING_MAX + 1), key=lambda t: (agreement(t), -t))


def baseline_from(records: Sequence, source: str, threshold: Optional[int] = None) -> Baseline:
    """The constant predictions and the accept threshold from baseline records (rating, decision)."""
    ratings = [r.rating for r in records if r.rating is not None]
    if not ratings:
        raise UserError(f"{source}: no record carries a rating 1-10, so it gives no baseline; pass "
                        "--baseline-data with the train split's records (they carry 'rating' and 'decision').")
    decisions: Dict[str, bool] = {}
    for r in records:
        accepted = decision_accepted(r.decision)
        if accepted is not None:
            decisions.setdefault(r.paper_id, accepted)
    accepted_papers = sum(decisions.values())
    majority = None if not decisions else accepted_papers * 2 > len(decisions)
    pairs = [(r.rating, decisions[r.paper_id]) for r in records if r.rating is not None and r.paper_id in decisions]
    if threshold is None and not pairs:
        raise UserError(f"{source}: no record carries both a rating and a decision, so no accept threshold can be "
                        "chosen from it; pass --accept-threshold.")
    return Baseline(source=source, mean_rating=mean(ratings), majority_accept=majority,
                    accept_threshold=threshold if threshold is not None else accept_threshold(pairs),
                    threshold_from="--accept-threshold" if threshold is not None else "baseline data")


def _bootstrap(values: List[float], statistic, samples: int = 1000, seed: int = 0) -> Optional[list]:
    """95% percentile interval of `statistic` over resampled items (None with fewer than two)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    stats = sorted(s for s in (statistic(rng.choices(values, k=len(values))) for _ in range(samples))
                   if s is not None)
    if len(stats) < samples // 2:
        return None
    return [round(stats[int(0.025 * len(stats))], 4), round(stats[int(0.975 * len(stats)) - 1], 4)]


def _stat(values: List[float], statistic) -> dict:
    value = statistic(values) if values else None
    return {"value": None if value is None else round(value, 4), "ci95": _bootstrap(values, statistic)}


def _mae(pairs):
    return mean([abs(p - h) for p, h in pairs]) if pairs else None


def _rho(pairs):
    return spearman([p for p, _ in pairs], [h for _, h in pairs])


def _accuracy(pairs):
    return mean([float(p == a) for p, a in pairs]) if pairs else None


def human_ceiling(references: Dict[str, list], threshold: int) -> dict:
    """Each human rating of a paper with 2+ ratings vs the mean of the paper's other ratings."""
    pairs, decided = [], []
    for records in references.values():
        rated = [r for r in records if r.rating is not None]
        if len(rated) < 2:
            continue
        for i, r in enumerate(rated):
            pairs.append((r.rating, mean([o.rating for j, o in enumerate(rated) if j != i])))
            accepted = decision_accepted(r.decision)
            if accepted is not None:
                decided.append((r.rating >= threshold, accepted))
    return {"reviews": len(pairs), "papers": sum(len([r for r in v if r.rating is not None]) >= 2
                                                  for v in references.values()),
            "mae": _stat(pairs, _mae), "spearman": _stat(pairs, _rho), "accuracy": _stat(decided, _accuracy)}


def rating_scores(predicted: Dict[str, Optional[int]], references: Dict[str, list], baseline: Baseline) -> dict:
    """The rating section of `score`: `predicted` paper id -> the candidate's rating (or None),
    `references` paper id -> its reference Records. Papers without a human rating are left out."""
    t = baseline.accept_threshold
    papers = [pid for pid in predicted if any(r.rating is not None for r in references[pid])]
    rated = [pid for pid in papers if predicted[pid] is not None]
    human = {pid: mean([r.rating for r in references[pid] if r.rating is not None]) for pid in papers}
    decision = {pid: next((a for a in map(decision_accepted, (r.decision for r in references[pid]))
                           if a is not None), None) for pid in predicted}
    model = [(predicted[pid], human[pid]) for pid in rated]
    decided = [pid for pid in rated if decision[pid] is not None]
    constant = [(baseline.mean_rating, human[pid]) for pid in rated]
    majority = [(baseline.majority_accept, decision[pid]) for pid in decided] \
        if baseline.majority_accept is not None else []
    return {
        "papers": len(papers),  # matched papers with at least one human rating
        "rated": len(rated),  # of those, with a candidate rating: the papers scored here
        "unrated": len(papers) - len(rated),  # the candidate gave no parsable rating
        "decided": len(decided),  # rated papers with an accept/reject decision: the accuracy's n
        "accept_threshold": t,
        "threshold_from": baseline.threshold_from,
        "baseline_data": baseline.source,
        "model": {"mae": _stat(model, _mae), "spearman": _stat(model, _rho),
                  "accuracy": _stat([(predicted[pid] >= t, decision[pid]) for pid in decided], _accuracy)},
        "constant": {"rating": round(baseline.mean_rating, 4), "mae": _stat(constant, _mae),
                     "spearman": {"value": None, "ci95": None},  # undefined for a constant prediction
                     "decision": None if baseline.majority_accept is None else
                     ("accept" if baseline.majority_accept else "reject"),
                     "accuracy": _stat(majority, _accuracy)},
        "humans": human_ceiling({pid: references[pid] for pid in predicted}, t),
        "per_paper": {pid: {"rating": predicted[pid], "human_rating": round(human[pid], 4) if pid in human else None,
                            "accepted": decision[pid]} for pid in predicted},
    }


def _cell(stat: dict, percent: bool = False) -> str:
    if stat["value"] is None:
        return "n/a"
    scale, fmt = (100.0, "{:.1f}%") if percent else (1.0, "{:.2f}")
    text = fmt.format(stat["value"] * scale)
    if stat["ci95"]:
        text += " (" + "-".join(fmt.format(v * scale).rstrip("%") for v in stat["ci95"]) + ")"
    return text


_THRESHOLD_FROM = {"--accept-threshold": "--accept-threshold",
                   "baseline data": "the best split of the baseline data's reviews"}


def rating_markdown(section: dict) -> List[str]:
    """The rating table of score.md."""
    m, c, h = section["model"], section["constant"], section["humans"]
    t = section["accept_threshold"]
    majority = f" ({c['decision']})" if c["decision"] else ""
    return [
        f"Ratings: {section['rated']} of {section['papers']} papers with a human rating got a rating from the "
        f"candidate ({section['unrated']} without one are left out). Against the mean human rating of each paper; "
        f"accept when the rating is >= {t} ({_THRESHOLD_FROM.get(section['threshold_from'], '')}), against "
        f"{section['decided']} "
        f"decisions. Constant baseline from `{section['baseline_data']}`: its mean rating {c['rating']:.2f} and "
        f"its majority decision{majority}. Humans: each of {h['reviews']} human ratings ({h['papers']} papers) "
        "against the mean of its paper's other ones.",
        "",
        "| | rating MAE | Spearman | accept/reject accuracy |",
        "|---|---|---|---|",
        f"| candidate | {_cell(m['mae'])} | {_cell(m['spearman'])} | {_cell(m['accuracy'], True)} |",
        f"| constant baseline | {_cell(c['mae'])} | n/a (constant) | {_cell(c['accuracy'], True)} |",
        f"| one human vs the others | {_cell(h['mae'])} | {_cell(h['spearman'])} | {_cell(h['accuracy'], True)} |",
        "",
    ]
