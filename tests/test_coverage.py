"""The review structure check: which of the 4 criteria a review covers."""

import pytest

from reviewgpt.data.prompt import CRITERIA
from reviewgpt.data.sample import sample_records
from reviewgpt.eval.coverage import coverage_fraction, covered_criteria, criteria_evidence

NOVELTY, ACCEPT, REJECT, SUGGEST = CRITERIA


def test_keys_are_the_prompt_criteria_in_order():
    assert tuple(covered_criteria("")) == CRITERIA
    assert covered_criteria("") == dict.fromkeys(CRITERIA, False)


def test_sample_reviews_cover_all_four():
    for record in sample_records(n_papers=6, reviews_per_paper=1):
        assert all(covered_criteria(record["review"]).values()), record["review"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("## Strengths\n- clear writing\n\n## Weaknesses\n- small datasets", {ACCEPT, REJECT}),
        ("**Pros:** simple.\n**Cons:** slow.", {ACCEPT, REJECT}),
        ("1. Originality: the idea is known.\n2. Questions for the authors: why Adam?", {NOVELTY, SUGGEST}),
        ("Significance - moderate.\nMinor comments:\n- typo in eq. 2", {NOVELTY, SUGGEST}),
        ("* Reasons to accept: solid.\n* Reasons to reject: none really.", {ACCEPT, REJECT}),
        ("### Potential reasons for rejection\nThe baselines are weak.", {REJECT}),
        ("__Summary of contributions__\nA new loss.", {NOVELTY}),
        ("The idea is novel. My main concern is the evaluation. I suggest adding error bars.",
         {NOVELTY, REJECT, SUGGEST}),
        ("I would vote for acceptance of this paper.", {ACCEPT}),
        ("This paper trains a network on images and reports accuracy on a benchmark.", set()),
    ],
)
def test_labels_cues_and_markdown(text, expected):
    assert {c for c, ok in covered_criteria(text).items() if ok} == expected


def test_words_inside_other_words_do_not_count():
    # "cons" in "consider", "pros" in "prose", "reject" is not "rejection" heading etc.
    text = "We consider the prose of the constraints; the proposal uses contrastive losses."
    assert not any(covered_criteria(text).values())


def test_rejection_heading_is_not_acceptance():
    covered = covered_criteria("Reasons for rejection:\nthe method is slow.")
    assert covered[REJECT] and not covered[ACCEPT]


def test_evidence_and_fraction():
    text = "Strengths: fast.\nSuggestions: add a table."
    evidence = criteria_evidence(text)
    assert evidence[ACCEPT].startswith("Strengths") and evidence[SUGGEST].startswith("Suggestions")
    assert evidence[NOVELTY] is None
    assert coverage_fraction(text) == 0.5
