"""A review's rating: the line training writes, the parser `review` reads it back
with, and which paper decisions count as accept. Format and parser live together so they agree.

With the recipe's `review_rating: true`, each training review whose record carries a rating 1-10
ends with one line after a blank line, the same for every template:

    ... the review's last sentence.

    Rating: 6/10

The line is part of the review text (tokenized with it, so it gets loss like the rest of the review,
and an untrimmed example still equals `apply_chat_template` of the review with its line). A record
without a usable rating (none, null, or not an integer 1-10 such as 7.5) gets no line; `data check`
counts them. "Rating: N/10" names its scale, reads like the end of a human review, and is one regex
to find.
"""

from __future__ import annotations

import re
from typing import Optional

RATING_MIN, RATING_MAX = 1, 10
RATING_LINE = "Rating: {rating}/10"
RATING_SEPARATOR = "\n\n"  # a blank line between the review and its rating line

# A line that labels a rating and goes on with a number: "Rating: 6/10", "**Overall rating:** 7",
# "## Rating = 8 / 10". A label with nothing or words after it ("Preliminary rating:", a heading in
# some ICLR reviews) is not a rating line.
_LABELLED = re.compile(r"^[ \t#>*_-]*(?:(?:overall|final)[ \t]+)?rating[ \t*_]*[:=][ \t*_]*(?P<rest>\d.*?)[ \t]*$",
                       re.IGNORECASE | re.MULTILINE)
# What follows the label: an integer (not 6.5), an optional "/ 10" or "out of 10", then anything but
# another number of the rating ("6/10 (top 50%)" is 6; "6 7", "6-7", "6/10/10" are not one rating).
_VALUE = re.compile(r"^(?P<value>\d+)(?![.,]?\d)(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+(?:[.,]\d+)?)(?![.,]?\d))?"
                    r"(?!\s*(?:/|[.,]?\d|[-\u2013]\s*\d))", re.IGNORECASE)


def usable_rating(value) -> Optional[int]:
    """A record's `rating` as an integer 1-10, or None: absent, null, or anything else (7.5, 0, 11,
    "high", true). Integral floats (6.0) and digit strings ("6") are read as their integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and RATING_MIN <= value <= RATING_MAX:
        return value
    return None


def with_rating(review: str, rating: Optional[int]) -> str:
    """The review as training writes it: unchanged without a rating, else ending in its rating line."""
    if rating is None:
        return review
    return review.rstrip() + RATING_SEPARATOR + RATING_LINE.format(rating=rating)


def training_review(record, review_rating: bool) -> str:
    """The review text training tokenizes (train.dataset, and `data check`/`data show` as training does):
    with the record's rating line when `review_rating` is on and the record has a rating."""
    return with_rating(record.review, record.rating) if review_rating else record.review


def parse_rating(text: str) -> Optional[int]:
    """The rating a generated review states, 1-10, or None.

    The last line that labels a rating with a number decides (training writes it at the end; a model
    that runs on may repeat itself): "Rating: 6/10" -> 6, "**Rating:** 7" -> 7, "rating = 8 / 10" -> 8.
    None when there is no such line, or the last one is not an integer 1-10 out of 10 ("Rating: 6.5/10",
    "Rating: 11/10", "Rating: 4/5").
    """
    lines = list(_LABELLED.finditer(text or ""))
    if not lines:
        return None
    found = _VALUE.match(lines[-1].group("rest"))
    if not found:
        return None
    scale = found.group("scale")
    if scale is not None and scale != str(RATING_MAX):
        return None
    value = int(found.group("value"))
    return value if RATING_MIN <= value <= RATING_MAX else None


def decision_accepted(decision) -> Optional[bool]:
    """A paper's decision as accept (True) or reject (False); None when there is none or it is unknown.

    Accept: any decision starting with "Accept" ("Accept (Poster)", "Accept (Oral)"). Reject: one starting
    with "Reject", and "Invite to Workshop Track": the paper was not accepted to the conference (ICLR
    2017's workshop invitations went to rejected submissions).
    """
    if not isinstance(decision, str):
        return None
    text = decision.strip().lower()
    if text.startswith("accept"):
        return True
    if text.startswith("reject") or "workshop" in text:
        return False
    return None
