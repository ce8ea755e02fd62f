"""Token ids and labels that keep the review whole, tokenized as each model's own tooling does.

trl 0.7.11 tokenizes with `truncation=True, max_length=max_seq_length`, which cuts the *tail*
of each text - the review, the only part worth learning (in the reference recipe: 60% of
real ICLR records exceed 8,192 tokens). Here the whole text of a template

    head + paper + tail + review + end

is tokenized at once, and when it does not fit, paper tokens are removed from the paper's end
and `CUT_MARKER` marks the cut. A review that does not fit even with one paper token raises
`ReviewTooLong`; callers stop with an error or, when asked, skip and count the record.

Why whole texts: tokenizing the parts one by one is not what the model saw in pre-training.
A sentencepiece tokenizer puts "▁" in front of every separately tokenized part (Mistral's real
tokenizer turned " [/INST]" into "▁ ▁[ / INST ]" and "Strengths" into "▁Stre ngth s"). So an
untrimmed example has exactly the ids of `tokenizer.apply_chat_template` (chat formats) or of
trl's `tokenizer(text)` (Alpaca texts), and a trimmed one differs only by the removed paper
tokens and the marker. The tests compare ids with the real Mistral tokenizer and the tiny ones.

How: a fast tokenizer splits a text at its control tokens and tokenizes each stretch between
them on its own. This module does the same with the template's control tokens (split where the
template wrote them, never inside a paper or review) and tokenizes each stretch with a copy of
the tokenizer that knows no control tokens at all, so a paper that quotes "<s>" or
"<end_of_turn>" gets the plain-text pieces of those characters instead of a control token that
would end the turn. Each token's character offsets say whether it belongs to the paper (may be
cut) or the review (gets a label).

Generation uses the same encoder (`encode_prompt`): the model sees the layout it was trained on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from reviewgpt.data.prompt import Template
from reviewgpt.errors import UserError

IGNORE_INDEX = -100
CUT_MARKER = "\n[... the rest of the paper was cut to fit the context ...]\n"

# Part numbers of a text, in order; BEFORE/AFTER are the tokenizer's own additions (BOS, EOS).
BEFORE, HEAD, PAPER, TAIL, REVIEW, END, AFTER = range(7)
# Separates a stretch from what came before it, as a control token does, in the plain tokenizer.
_SEGMENT_START = "<|reviewgpt-segment-start|>"


class ReviewTooLong(ValueError):
    """The review (with the prompt's fixed parts) does not fit `max_length` tokens."""

    def __init__(self, needed: int, max_length: int):
        super().__init__(f"the review needs {needed} tokens with the prompt but max_length is {max_length}")
        self.needed = needed
        self.max_length = max_length


@dataclass(frozen=True)
class Example:
    input_ids: List[int]
    labels: List[int]
    paper_tokens: int  # tokens of the paper before any cut
    paper_kept: int  # tokens of the paper kept
    review_tokens: int  # tokens from the review's first to the end (end + EOS): all are in input_ids

    @property
    def paper_truncated(self) -> bool:
        return self.paper_kept < self.paper_tokens


@dataclass(frozen=True)
class Encoded:
    """A whole text's ids and where its paper and review are."""

    ids: List[int]
    paper: Tuple[int, int]  # [start, stop) of the tokens that lie wholly inside the paper
    review_start: int  # first token that holds part of the review (or what follows it)

    @property
    def paper_tokens(self) -> int:
        return self.paper[1] - self.paper[0]


class PlainTokenizer:
    """The tokenizer's own normalizer, pre-tokenizer and vocabulary, with no control tokens."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError(f"{type(tokenizer).__name__} is a slow tokenizer; reviewgpt needs a fast one "
                            "(a tokenizer.json next to the model, which AutoTokenizer loads by default).")
        data = json.loads(backend.to_str())
        data["added_tokens"] = [{"id": len(data["model"].get("vocab") or ()) + len(data.get("added_tokens", ())),
                                 "content": _SEGMENT_START, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True}]
        data["post_processor"] = None
        data["truncation"] = None
        data["padding"] = None
        self._tokenizer = Tokenizer.from_str(json.dumps(data))

    def encode(self, text: str, at_start: bool) -> Tuple[List[int], List[Tuple[int, int]]]:
        """Ids and character offsets of `text` tokenized as one stretch; `at_start`: it begins the
        whole text (sentencepiece tokenizers may treat the very first stretch differently)."""
        if not text:
            return [], []
        if at_start:
            enc = self._tokenizer.encode(text, add_special_tokens=False)
            return list(enc.ids), list(enc.offsets)
        enc = self._tokenizer.encode(_SEGMENT_START + text, add_special_tokens=False)
        shift = len(_SEGMENT_START)
        return list(enc.ids[1:]), [(s - shift, e - shift) for s, e in enc.offsets[1:]]


def control_tokens(tokenizer) -> dict:
    """text -> id of every control (special or added) token of the tokenizer."""
    tokens = dict(getattr(tokenizer, "added_tokens_encoder", {}))
    for text in tokenizer.all_special_tokens:
        tokens.setdefault(text, tokenizer.convert_tokens_to_ids(text))
    return {text: i for text, i in tokens.items() if text and i is not None}


def special_affixes(tokenizer) -> Tuple[List[int], List[int]]:
    """The ids a tokenizer adds around a text with add_special_tokens=True (e.g. [BOS], [])."""
    probe = "probe"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


class PromptEncoder:
    """Encodes (paper, review) pairs with one template and one tokenizer."""

    def __init__(self, tokenizer, template: Template):
        self.tokenizer = tokenizer
        self.template = template
        self.plain = PlainTokenizer(tokenizer)
        self.controls = control_tokens(tokenizer)
        self._control_re = re.compile("|".join(map(re.escape, sorted(self.controls, key=len, reverse=True))))
        if template.chat:
            self._check_controls()
            self.before_ids, self.after_ids = [], []
        else:
            self.before_ids, self.after_ids = special_affixes(tokenizer)
        if template.append_eos and tokenizer.eos_token_id is not None:
            self.after_ids = self.after_ids + [tokenizer.eos_token_id]
        self.marker_ids = self._marker_ids()

    def _check_controls(self) -> None:
        """A chat format on a tokenizer that lacks its control tokens would train on plain text."""
        for literal in re.findall(r"<[^<>\s]+>", self.template.head + self.template.tail + self.template.end):
            if literal not in self.controls:
                raise UserError(
                    f"template {self.template.name!r} writes the control token {literal!r}, which this tokenizer "
                    f"does not have; pick the template of this model's own chat format (--template).")

    def _marker_ids(self) -> List[int]:
        """CUT_MARKER's ids as they appear in the middle of a paper."""
        lead = "."
        ids, offsets = self.plain.encode(lead + CUT_MARKER, at_start=False)
        for i, (start, _end) in enumerate(offsets):
            if start >= len(lead):
                return ids[i:]
        return self.plain.encode(CUT_MARKER, at_start=False)[0]

    def content_ids(self, text: str) -> List[int]:
        """Ids of `text` as a stretch of plain text in the middle of a prompt (control strings stay text)."""
        return self.plain.encode(text, at_start=False)[0]

    def _pieces(self, paper: str, review: Optional[str]) -> List[Tuple[int, str, bool]]:
        """(part, text, is_control) in order; control tokens only where the template wrote them."""
        t = self.template
        parts = [(HEAD, t.head), (PAPER, t.content(paper)), (TAIL, t.tail)]
        if review is not None:
            parts += [(REVIEW, t.content(review)), (END, t.end)]
        pieces = []
        for part, text in parts:
            if part in (PAPER, REVIEW):
                pieces.append((part, text, False))
                continue
            pos = 0
            for match in self._control_re.finditer(text) if self.controls else ():
                pieces += [(part, text[pos:match.start()], False), (part, match.group(), True)]
                pos = match.end()
            pieces.append((part, text[pos:], False))
        return [p for p in pieces if p[1]]

    def encode_text(self, paper: str, review: Optional[str] = None) -> Encoded:
        """The whole text's ids (untrimmed); review None: the prompt for generation (no EOS)."""
        ids, parts_of_tokens = list(self.before_ids), [(BEFORE, BEFORE)] * len(self.before_ids)
        pieces = self._pieces(paper, review)
        at_start = not self.before_ids
        i = 0
        while i < len(pieces):
            part, text, is_control = pieces[i]
            if is_control:
                ids.append(self.controls[text])
                parts_of_tokens.append((part, part))
                i += 1
                at_start = False
                continue
            # One stretch: the plain pieces up to the next control token, tokenized together.
            stretch, owner = "", []
            while i < len(pieces) and not pieces[i][2]:
                stretch += pieces[i][1]
                owner += [pieces[i][0]] * len(pieces[i][1])
                i += 1
            stretch_ids, offsets = self.plain.encode(stretch, at_start)
            at_start = False
            for token, (start, end) in zip(stretch_ids, offsets):
                first = owner[min(start, len(owner) - 1)]
                last = owner[min(max(end - 1, start), len(owner) - 1)]
                ids.append(token)
                parts_of_tokens.append((first, last))
        if review is not None:
            ids += self.after_ids
            parts_of_tokens += [(AFTER, AFTER)] * len(self.after_ids)
        paper_positions = [n for n, (first, last) in enumerate(parts_of_tokens) if first == last == PAPER]
        paper = (paper_positions[0], paper_positions[-1] + 1) if paper_positions else (0, 0)
        if paper_positions and len(paper_positions) != paper[1] - paper[0]:
            raise AssertionError("paper tokens are not contiguous")  # cannot happen: parts come in order
        review_start = next((n for n, (_first, last) in enumerate(parts_of_tokens) if last >= REVIEW), len(ids))
        return Encoded(ids=ids, paper=paper, review_start=review_start)

    def shortest_length(self, encoded: Encoded) -> int:
        """The fewest tokens this text can have once its paper is cut to one token plus the marker."""
        if encoded.paper_tokens == 0:
            return len(encoded.ids)
        return len(encoded.ids) - encoded.paper_tokens + len(self.marker_ids) + 1

    def _trim(self, encoded: Encoded, max_length: int) -> Tuple[List[int], int]:
        """Ids within max_length with the paper's end cut (marked): (ids, paper tokens kept)."""
        ids, (start, stop) = encoded.ids, encoded.paper
        excess = len(ids) - max_length
        if excess <= 0:
            return ids, encoded.paper_tokens
        keep = encoded.paper_tokens - excess - len(self.marker_ids)
        return ids[:start + keep] + self.marker_ids + ids[stop:], keep

    def encode_prompt(self, paper: str, max_prompt_tokens: int) -> tuple:
        """Prompt ids for generation, the paper trimmed so the prompt has at most
        `max_prompt_tokens`. Returns (ids, paper_tokens, paper_kept)."""
        encoded = self.encode_text(paper)
        if self.shortest_length(encoded) > max_prompt_tokens:
            raise ValueError(
                f"max_prompt_tokens={max_prompt_tokens} leaves no room for the paper "
                f"(the prompt alone takes {len(encoded.ids) - encoded.paper_tokens} tokens)"
            )
        ids, kept = self._trim(encoded, max_prompt_tokens)
        return ids, encoded.paper_tokens, kept

    def encode_example(self, paper: str, review: str, max_length: int, loss_on: str = "review") -> Example:
        """Training ids and labels; raises ReviewTooLong if the review cannot fit whole."""
        if loss_on not in ("review", "all"):
            raise ValueError(f"loss_on must be 'review' or 'all', got {loss_on!r}")
        encoded = self.encode_text(paper, review)
        if len(encoded.ids) > max_length and self.shortest_length(encoded) > max_length:
            raise ReviewTooLong(self.shortest_length(encoded), max_length)
        ids, kept = self._trim(encoded, max_length)
        review_tokens = len(encoded.ids) - encoded.review_start
        if loss_on == "review":
            labels = [IGNORE_INDEX] * (len(ids) - review_tokens) + ids[len(ids) - review_tokens:]
        else:  # the reference recipe: plain causal-LM loss on every token
            labels = list(ids)
        return Example(input_ids=ids, labels=labels, paper_tokens=encoded.paper_tokens, paper_kept=kept,
                       review_tokens=review_tokens)


def pad_batch(features: Sequence[dict], pad_token_id: int, pad_to_multiple_of: Optional[int] = None,
              side: str = "right") -> dict:
    """Pad input_ids (pad id), labels (-100) and build attention_mask, as torch tensors."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids, labels, mask = [], [], []
    for f in features:
        n = len(f["input_ids"])
        pad = longest - n
        f_labels = list(f["labels"]) if "labels" in f else [IGNORE_INDEX] * n
        if side == "left":
            input_ids.append([pad_token_id] * pad + list(f["input_ids"]))
            labels.append([IGNORE_INDEX] * pad + f_labels)
            mask.append([0] * pad + [1] * n)
        else:
            input_ids.append(list(f["input_ids"]) + [pad_token_id] * pad)
            labels.append(f_labels + [IGNORE_INDEX] * pad)
            mask.append([1] * n + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
