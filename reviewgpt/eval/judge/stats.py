"""Win rates from pairwise verdicts: ties count half, 95% Wilson intervals, position consistency.

Each paper pair is judged in both orders (candidate as A, then as B). A judgment gives the
candidate 1 (win), 0.5 (tie) or 0 (loss); a pair's score is the mean over its parsable orders, so
a judge that always picks "A" scores every pair 0.5 and cancels out. The win rate is the mean pair
score, and its interval is Wilson's with n = judged pairs (not judgments: the two orders of one
pair are not independent evidence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

from reviewgpt.eval.judge.prompt import OVERALL, QUESTIONS, Verdict

Z_95 = 1.959963984540054
# The position the candidate review takes in each order.
CANDIDATE_POSITION = {"AB": "A", "BA": "B"}


def candidate_score(winner: str, candidate_position: str) -> float:
    if winner == "tie":
        return 0.5
    return 1.0 if winner == candidate_position else 0.0


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion; `successes` may be fractional (ties as half)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class WinRate:
    rate: float | None  # mean pair score, ties as half; None with no judged pair (JSON null, not NaN)
    low: float
    high: float
    n: int  # judged pairs
    wins: int  # pairs scored above 0.5
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def win_rate(pair_scores: Sequence[float]) -> WinRate:
    n = len(pair_scores)
    total = float(sum(pair_scores))
    low, high = wilson_interval(total, n)
    return WinRate(
        rate=total / n if n else None,
        low=low,
        high=high,
        n=n,
        wins=sum(s > 0.5 for s in pair_scores),
        ties=sum(s == 0.5 for s in pair_scores),
        losses=sum(s < 0.5 for s in pair_scores),
    )


def pair_score(orders: Mapping[str, Verdict | None], question: str = OVERALL) -> float | None:
    """The candidate's score on `question` for one pair, or None when no order parsed."""
    scores = [candidate_score(v.winners[question], CANDIDATE_POSITION[o]) for o, v in orders.items() if v]
    return sum(scores) / len(scores) if scores else None


def is_position_consistent(orders: Mapping[str, Verdict | None], question: str = OVERALL) -> bool | None:
    """True when both orders give the candidate the same outcome; None unless both parsed."""
    if not all(orders.get(o) for o in CANDIDATE_POSITION):
        return None
    a, b = (candidate_score(orders[o].winners[question], CANDIDATE_POSITION[o]) for o in CANDIDATE_POSITION)
    return a == b


@dataclass(frozen=True)
class JudgeStats:
    overall: WinRate
    per_criterion: Dict[str, WinRate]
    position_consistency: float | None  # share of fully judged pairs whose two orders agree
    first_position_preference: float | None  # share of decisive judgments that chose "A"
    # Pairs: judged (a parsable order) + unparsable (every order unparsable) + missing (no parsable order
    # and one not answered yet, which a rerun asks). Judgments, two per pair: parsable + unparsable + missing.
    pairs: int
    judged_pairs: int
    unparsable_pairs: int
    missing_pairs: int
    judgments: int
    unparsable_judgments: int
    missing_judgments: int  # not asked yet or failed (network): a rerun asks them

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["overall"] = self.overall.to_dict()
        d["per_criterion"] = {q: w.to_dict() for q, w in self.per_criterion.items()}
        return d


def summarize(pairs: Sequence[Mapping[str, dict]]) -> JudgeStats:
    """`pairs`: per pair, {order: {"status": "ok"|"unparsable"|"missing", "verdict": Verdict|None}}."""
    parsed = [{o: j.get("verdict") if j.get("status") == "ok" else None for o, j in p.items()} for p in pairs]
    unparsable = sum(j.get("status") == "unparsable" for p in pairs for j in p.values())
    missing = sum(j.get("status") not in ("ok", "unparsable") for p in pairs for j in p.values())
    unjudged = [p for p, orders in zip(pairs, parsed) if not any(orders.values())]
    missing_pairs = sum(any(j.get("status") not in ("ok", "unparsable") for j in p.values()) for p in unjudged)
    per_question = {}
    for question in QUESTIONS:
        scores = [s for s in (pair_score(orders, question) for orders in parsed) if s is not None]
        per_question[question] = win_rate(scores)
    consistency = [c for c in (is_position_consistent(orders) for orders in parsed) if c is not None]
    decisive = [
        v.winners[OVERALL] for orders in parsed for v in orders.values() if v and v.winners[OVERALL] != "tie"
    ]
    return JudgeStats(
        overall=per_question[OVERALL],
        per_criterion={q: per_question[q] for q in QUESTIONS if q != OVERALL},
        position_consistency=sum(consistency) / len(consistency) if consistency else None,
        first_position_preference=decisive.count("A") / len(decisive) if decisive else None,
        pairs=len(pairs),
        judged_pairs=per_question[OVERALL].n,
        unparsable_pairs=len(unjudged) - missing_pairs,
        missing_pairs=missing_pairs,
        judgments=sum(len(p) for p in pairs),
        unparsable_judgments=unparsable,
        missing_judgments=missing,
    )
