"""The judge's prompt (versioned) and the parser of its answer.

The judge sees two reviews of one paper, labelled A and B, and answers one JSON object: a winner
("A", "B" or "tie") and a one-sentence reason for each of the reviewer prompt's 4 criteria, plus
an overall winner. The overall winner is what the win rate counts, as in the reference recipe's
GPT-4 comparison; the criteria give per-criterion win rates.

`JUDGE_PROMPT_VERSION` names the exact text below. It is recorded with every verdict and is part
of every cache key, so editing the prompt means bumping the version: old verdicts are then not
reused for a different question.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping

from reviewgpt.data.prompt import CRITERIA

JUDGE_PROMPT_VERSION = "judge-v1"

OVERALL = "overall"
# The questions the judge answers, in the order the answer lists them.
QUESTIONS = (*CRITERIA, OVERALL)
WINNERS = ("A", "B", "tie")

SYSTEM_PROMPT = (
    "You are an expert meta-reviewer for a machine learning conference. You compare two reviews of "
    "the same paper and judge which one is more useful to the authors and the area chair. You are "
    "impartial: the order in which the reviews are shown and their length must not influence you."
)

_ANSWER_SHAPE = ",\n".join(f'  "{q}": {{"winner": "A" | "B" | "tie", "reason": "..."}}' for q in QUESTIONS)

USER_TEMPLATE = """A good review covers 4 criteria: importance and novelty of the paper, potential reasons \
for acceptance, potential reasons for rejection, and suggestions for improvement. For each criterion, \
decide which review addresses it better (specific, correct, grounded in the paper, useful); answer \
"tie" only when they are equally good. Then give an overall winner.
{paper_block}
[Review A]
{review_a}
[End of review A]

[Review B]
{review_b}
[End of review B]

Answer with one JSON object and nothing else, in exactly this shape (one short sentence per reason):
{{
{answer_shape}
}}"""

def verdict_schema() -> dict:
    """The answer's JSON Schema, for servers that constrain output to it (`--json-mode schema`)."""
    entry = {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": list(WINNERS)}, "reason": {"type": "string"}},
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {q: entry for q in QUESTIONS},
        "required": list(QUESTIONS),
        "additionalProperties": False,
    }


PAPER_BLOCK = "\n[Paper (may be truncated)]\n{paper}\n[End of paper]\n"
TRUNCATION_MARK = "\n[... truncated ...]"


def trim_paper(paper: str, max_chars: int) -> str:
    """The paper's head, at most `max_chars` characters: the abstract and introduction carry the
    claims a reviewer must weigh; 0 drops the paper."""
    if max_chars <= 0:
        return ""
    if len(paper) <= max_chars:
        return paper
    return paper[:max_chars] + TRUNCATION_MARK


def build_messages(review_a: str, review_b: str, paper: str = "") -> List[Dict[str, str]]:
    """Chat messages (OpenAI shape) asking the judge to compare review A with review B."""
    paper_block = PAPER_BLOCK.format(paper=paper) if paper else ""
    user = USER_TEMPLATE.format(
        paper_block=paper_block,
        review_a=review_a.strip(),
        review_b=review_b.strip(),
        answer_shape=_ANSWER_SHAPE,
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def prompt_text() -> str:
    """The prompt with placeholders, as recorded next to the results."""
    user = USER_TEMPLATE.format(
        paper_block=PAPER_BLOCK.format(paper="{paper}"),
        review_a="{review_a}",
        review_b="{review_b}",
        answer_shape=_ANSWER_SHAPE,
    )
    return f"# {JUDGE_PROMPT_VERSION}\n\n## system\n{SYSTEM_PROMPT}\n\n## user\n{user}\n"


class UnparsableVerdict(ValueError):
    """The judge's answer is not the JSON object the prompt asks for."""


@dataclass(frozen=True)
class Verdict:
    """One judgment of one ordering: winner ("A"/"B"/"tie") and reason per question."""

    winners: Mapping[str, str]
    reasons: Mapping[str, str]

    def to_dict(self) -> dict:
        return {q: {"winner": self.winners[q], "reason": self.reasons.get(q, "")} for q in QUESTIONS}

    @classmethod
    def from_dict(cls, data: Mapping) -> Verdict:
        return cls(
            winners={q: data[q]["winner"] for q in QUESTIONS},
            reasons={q: data[q].get("reason", "") for q in QUESTIONS},
        )


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def _normalise_winner(value) -> str | None:
    if not isinstance(value, str):
        return None
    word = value.strip().strip(".").lower()
    word = re.sub(r"^review\s+", "", word)
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def parse_verdict(answer: str) -> Verdict:
    """The verdict in `answer`, or `UnparsableVerdict`. Only spelling is forgiven ("Review A",
    "Tie", a ```json fence); a missing question or an unknown winner is never guessed."""
    fenced = _FENCE.search(answer or "")
    text = fenced.group(1) if fenced else (answer or "")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise UnparsableVerdict("no JSON object in the answer")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise UnparsableVerdict(f"invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UnparsableVerdict("the answer is not a JSON object")
    lowered = {str(k).strip().lower(): v for k, v in data.items()}
    winners, reasons = {}, {}
    for question in QUESTIONS:
        entry = lowered.get(question)
        if not isinstance(entry, dict):
            raise UnparsableVerdict(f"no entry for {question!r}")
        winner = _normalise_winner(entry.get("winner"))
        if winner is None:
            raise UnparsableVerdict(f"winner {entry.get('winner')!r} for {question!r} is not A, B or tie")
        winners[question] = winner
        reasons[question] = str(entry.get("reason", ""))
    return Verdict(winners=winners, reasons=reasons)
