"""Which of the reviewer prompt's 4 criteria a review covers (the review structure check).

The reference prompt asks for ** importance and novelty **, ** potential reasons for acceptance **,
** potential reasons for rejection ** and ** suggestions for improvement **. Fine-tuned models and
human reviewers rarely use those exact words, so a criterion counts as covered when either

- a *label* names it: a heading or a line that starts with a known name for it, in any markdown
  dress (`## Strengths`, `**Pros:**`, `- Weaknesses:`, `3. Questions for the authors`), or
- a *cue phrase* in running text says it ("the main novelty", "my main concern", "I suggest").

This is a presence check, not a quality score: it answers "did the review address this?", which
is what the prompt demands. `criteria_evidence` returns the matched text, to see why.
"""

from __future__ import annotations

import re
from typing import Dict

from reviewgpt.data.prompt import CRITERIA

# Names a reviewer gives a section for each criterion (matched as labels only, because words like
# "issues" or "comments" in running text say nothing about structure).
_LABELS = {
    "importance and novelty": (
        r"importance", r"novelty", r"significance", r"originality", r"contributions?", r"impact",
        r"relevance",
    ),
    "reasons for acceptance": (
        r"(?:potential )?reasons? (?:for|to) accept(?:ance)?", r"strengths?", r"strong points?", r"pros",
        r"positives?", r"positive (?:points?|aspects?)", r"merits?", r"advantages?",
    ),
    "reasons for rejection": (
        r"(?:potential )?reasons? (?:for|to) reject(?:ion)?", r"weakness(?:es)?", r"weak points?", r"cons",
        r"concerns?", r"limitations?", r"negatives?", r"negative (?:points?|aspects?)", r"drawbacks?",
        r"shortcomings?", r"major (?:issues|comments|concerns|points)", r"criticisms?",
    ),
    "suggestions for improvement": (
        r"suggestions?(?: for improvement)?", r"questions?(?: (?:for|to) the authors?)?",
        r"minor (?:comments|issues|points|remarks)", r"detailed comments", r"requested changes",
        r"recommendations?", r"typos?", r"improvements?", r"other comments", r"additional comments",
    ),
}

# Phrases that address a criterion inside running text.
_CUES = {
    "importance and novelty": (
        r"\bnovel(?:ty)?\b", r"\boriginal(?:ity)?\b", r"\bsignifican(?:ce|t (?:contribution|advance))",
        r"\bimportan(?:t|ce) (?:problem|question|topic|issue|contribution|direction)",
        r"\bnot (?:really |very )?new\b", r"\bincremental\b", r"\bfirst to\b",
    ),
    "reasons for acceptance": (
        r"\bstrengths?\b", r"\b(?:vote|argue|recommend|lean(?:ing)?) (?:for |towards? )?accept",
        r"\bshould be accepted\b", r"\bworth(?:y of)? (?:accepting|publishing|publication)",
        r"\bon the positive side\b", r"\bpros\b", r"\breasons? (?:for|to) accept",
    ),
    "reasons for rejection": (
        r"\bweakness(?:es)?\b",
        r"\b(?:main|major|biggest|key|primary) (?:concern|issue|problem|limitation)s?\b",
        r"\bconcerns?\b", r"\bshortcomings?\b", r"\bdrawbacks?\b", r"\breject(?:ion|ed)?\b",
        r"\bon the negative side\b", r"\bcons\b", r"\blimitations?\b",
    ),
    "suggestions for improvement": (
        r"\bsuggest(?:ion)?s?\b", r"\bi would (?:like to see|recommend|encourage)",
        r"\bthe authors (?:should|could|might|may want to)\b",
        r"\bit would be (?:nice|good|helpful|interesting|useful|better) (?:to|if)\b",
        r"\bcould be improved\b",
        r"\brecommend that\b", r"\bplease (?:clarify|explain|add|discuss)",
    ),
}

# A label: a line that starts (after markdown heading marks, bullets, numbering and emphasis) with a
# name, followed by a colon, a dash, closing emphasis or the end of the line.
_LABEL_PREFIX = r"^[ \t>]*(?:#{1,6}[ \t]*)?(?:[-*+•][ \t]+)?(?:\(?[0-9ivxIVX]{1,4}[.)][ \t]*)?[*_ \t]*"
_LABEL_SUFFIX = r"[*_ \t]*(?::|[ \t][-–—][ \t]|\*\*|__|$)"

_LABEL_LEAD = r"(?:(?:the|main|key|potential|overall|summary of|list of)[ \t]+)?"
_LABEL_RE = {
    # (?![a-z]) rather than \b: "_" is a word character, so "__Pros__" has no \b after "Pros".
    c: re.compile(_LABEL_PREFIX + _LABEL_LEAD + "(?:" + "|".join(names) + r")(?![a-z])[^\n:]{0,40}?"
                  + _LABEL_SUFFIX, re.IGNORECASE | re.MULTILINE)
    for c, names in _LABELS.items()
}
_CUE_RE = {c: re.compile("|".join(cues), re.IGNORECASE) for c, cues in _CUES.items()}

assert set(_LABELS) == set(_CUES) == set(CRITERIA), "coverage rules must name exactly prompt.CRITERIA"


def criteria_evidence(review_text: str) -> Dict[str, str | None]:
    """For each criterion, the label or cue text that shows the review covers it, or None."""
    text = review_text or ""
    evidence: Dict[str, str | None] = {}
    for criterion in CRITERIA:
        match = _LABEL_RE[criterion].search(text) or _CUE_RE[criterion].search(text)
        evidence[criterion] = match.group(0).strip() if match else None
    return evidence


def covered_criteria(review_text: str) -> Dict[str, bool]:
    """Map each of `reviewgpt.data.prompt.CRITERIA` to whether `review_text` covers it."""
    return {criterion: found is not None for criterion, found in criteria_evidence(review_text).items()}


def coverage_fraction(review_text: str) -> float:
    """Share of the 4 criteria covered (0.0 to 1.0)."""
    covered = covered_criteria(review_text)
    return sum(covered.values()) / len(covered)
