"""Judge arithmetic, answer parsing and pairing rules (no model, no network)."""

from __future__ import annotations

import json

import pytest

from reviewgpt.errors import UserError
from reviewgpt.eval.judge.data import load_reviews, make_pairs
from reviewgpt.eval.judge.prompt import (
    QUESTIONS,
    UnparsableVerdict,
    Verdict,
    build_messages,
    parse_verdict,
    trim_paper,
)
from reviewgpt.eval.judge.stats import is_position_consistent, pair_score, summarize, wilson_interval, win_rate
from tests.judge_support.server import verdict_json


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Fractional successes (ties as half) sit between their integer neighbours.
    assert wilson_interval(5, 10)[0] < wilson_interval(5.5, 10)[0] < wilson_interval(6, 10)[0]


def test_ties_count_half_and_outcomes_are_counted():
    w = win_rate([1.0, 0.5, 0.0, 1.0])
    assert w.rate == 0.625 and (w.wins, w.ties, w.losses, w.n) == (2, 1, 1, 4)
    assert w.low < 0.625 < w.high


def verdict(winner):
    return Verdict(winners=dict.fromkeys(QUESTIONS, winner), reasons={})


def test_both_orders_cancel_position_bias():
    always_a = {"AB": verdict("A"), "BA": verdict("A")}
    assert pair_score(always_a) == 0.5 and is_position_consistent(always_a) is False
    candidate_wins = {"AB": verdict("A"), "BA": verdict("B")}
    assert pair_score(candidate_wins) == 1.0 and is_position_consistent(candidate_wins) is True
    one_order = {"AB": verdict("B"), "BA": None}
    assert pair_score(one_order) == 0.0 and is_position_consistent(one_order) is None
    assert pair_score({"AB": None, "BA": None}) is None


def test_summarize_counts_unparsable_and_missing_apart():
    ok = {"status": "ok"}
    pairs = [
        {"AB": {**ok, "verdict": verdict("A")}, "BA": {**ok, "verdict": verdict("B")}},
        {"AB": {"status": "unparsable", "verdict": None}, "BA": {"status": "missing"}},
        {"AB": {**ok, "verdict": verdict("tie")}, "BA": {**ok, "verdict": verdict("tie")}},
        {"AB": {"status": "unparsable", "verdict": None}, "BA": {"status": "unparsable", "verdict": None}},
        {"AB": {**ok, "verdict": verdict("A")}, "BA": {"status": "missing"}},
    ]
    stats = summarize(pairs)
    assert stats.overall.rate == 5 / 6 and stats.judged_pairs == 3 and stats.pairs == 5
    # Every pair and every judgment is counted once: judged + unparsable + missing.
    assert (stats.unparsable_pairs, stats.missing_pairs) == (1, 1)
    assert stats.judgments == 10 and stats.unparsable_judgments == 3 and stats.missing_judgments == 2
    assert stats.position_consistency == 1.0 and stats.first_position_preference == 2 / 3


@pytest.mark.parametrize(
    "answer",
    [
        verdict_json("A"),
        "Sure! Here is my verdict:\n```json\n" + verdict_json("Review B") + "\n```",
        verdict_json("Tie").replace('"Tie"', '" tie. "'),
    ],
)
def test_parse_forgives_spelling(answer):
    assert set(parse_verdict(answer).winners.values()) <= {"A", "B", "tie"}


@pytest.mark.parametrize(
    "answer, problem",
    [
        ("Review A is better.", "no JSON object"),
        ('{"overall": {"winner": "A"}', "invalid JSON"),  # cut off mid-answer
        ("{'overall': 'A'}", "invalid JSON"),
        (json.dumps({"overall": {"winner": "A"}}), "no entry for 'importance and novelty'"),
        (verdict_json("C"), "is not A, B or tie"),
        (verdict_json("both"), "is not A, B or tie"),
    ],
)
def test_parse_never_guesses(answer, problem):
    with pytest.raises(UnparsableVerdict, match=problem):
        parse_verdict(answer)


def test_messages_carry_both_reviews_in_order_and_the_trimmed_paper():
    paper = "x" * 50
    messages = build_messages("first review", "second review", trim_paper(paper, 10))
    user = messages[-1]["content"]
    assert user.index("first review") < user.index("second review")
    assert "x" * 10 + "\n[... truncated ...]" in user and "x" * 11 not in user
    assert "[Paper" not in build_messages("a", "b", trim_paper(paper, 0))[-1]["content"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairing_first_and_all_and_matching_by_paper(tmp_path):
    cand = write(
        tmp_path / "c.jsonl", [{"id": "p1", "paper_id": "p1", "review": "c1"}, {"id": "p9", "review": "c9"}]
    )
    ref = write(
        tmp_path / "r.jsonl",
        [
            {"id": "p1_r0", "paper_id": "p1", "paper": "P1 text", "review": "r1a"},
            {"id": "p1_r1", "paper_id": "p1", "paper": "P1 text", "review": "r1b"},
            {"id": "p2_r0", "paper_id": "p2", "paper": "P2 text", "review": "r2"},
        ],
    )
    cands, refs = load_reviews(cand), load_reviews(ref)
    first = make_pairs(cands, refs, "first")
    assert [(p.paper_id, p.reference.review) for p in first] == [("p1", "r1a")]
    assert first[0].paper == "P1 text"  # the reference data file carries the paper
    assert [p.reference.review for p in make_pairs(cands, refs, "all")] == ["r1a", "r1b"]
    assert make_pairs(cands, refs, "first", papers={"p1": "from --papers"})[0].paper == "from --papers"


def test_review_file_mistakes_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "review": "ok"}\n{"id": "b", "text": "no review field"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'review'"):
        load_reviews(bad)
    bad.write_text('{"id": "a", "review": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        load_reviews(bad)
    with pytest.raises(UserError, match="no such file"):
        load_reviews(tmp_path / "missing.jsonl")
