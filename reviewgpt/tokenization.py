"""Token ids and labels that keep the review whole.

trl 0.7.11 tokenizes with `truncation=True, max_length=max_seq_length`, which cuts the *tail*
of each text - the review, the only part worth learning (REFERENCE.md section 2 and 4: 60% of real
ICLR records exceed 8,192 tokens). Here the text is built from separately tokenized parts

    [BOS] head | paper | tail | review | end [EOS]

and when it does not fit, the paper is trimmed: its head is kept and `CUT_MARKER` marks the
cut. A review that does not fit even with an empty paper raises `ReviewTooLong`; callers
either stop with an error or, when asked, skip and count the record. Nothing is cut silently.

Generation uses the same `encode_prompt` so the model sees at inference the layout it was
trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from reviewgpt.prompt import Template

IGNORE_INDEX = -100
CUT_MARKER = "\n[... the rest of the paper was cut to fit the context ...]\n"


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
    review_tokens: int  # tokens of the review (+ end + EOS): all of them are in input_ids

    @property
    def paper_truncated(self) -> bool:
        return self.paper_kept < self.paper_tokens


def _ids(tokenizer, text: str) -> List[int]:
    if not text:
        return []
    # verbose=False: a paper longer than the model is expected here (it is trimmed afterwards).
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _special_pattern(tokenizer) -> Optional[re.Pattern]:
    specials = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    specials = sorted((s for s in specials if s), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def content_ids(tokenizer, text: str, pattern: Optional[re.Pattern]) -> List[int]:
    """Token ids of user text (a paper, a review) in which control tokens stay plain text.

    Fast tokenizers turn "<bos>", "</s>" or "<end_of_turn>" anywhere in the text into the control
    token itself; a paper that quotes one would end the turn or the sequence early. Such a string
    is tokenized as two plain pieces ("<" + "bos>") instead.
    """
    if pattern is None or not pattern.search(text):
        return _ids(tokenizer, text)
    ids, pos = [], 0
    for match in pattern.finditer(text):
        ids += _ids(tokenizer, text[pos:match.start()])
        ids += _ids(tokenizer, match.group()[:1]) + _ids(tokenizer, match.group()[1:])
        pos = match.end()
    return ids + _ids(tokenizer, text[pos:])


class PromptEncoder:
    """Caches the fixed parts of a template's token ids for one tokenizer."""

    def __init__(self, tokenizer, template: Template):
        self.tokenizer = tokenizer
        self.template = template
        bos = [] if template.text_has_bos or tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        self.head_ids = bos + _ids(tokenizer, template.head)
        self.tail_ids = _ids(tokenizer, template.tail)
        self.end_ids = _ids(tokenizer, template.end)
        eos = tokenizer.eos_token_id
        if eos is not None and (not self.end_ids or self.end_ids[-1] != eos):
            self.end_ids = self.end_ids + [eos]
        self.marker_ids = _ids(tokenizer, CUT_MARKER)
        self.special_pattern = _special_pattern(tokenizer)

    def content_ids(self, text: str) -> List[int]:
        return content_ids(self.tokenizer, text, self.special_pattern)

    def fixed_length(self) -> int:
        return len(self.head_ids) + len(self.tail_ids)

    def shortest_length(self, review_tokens: int) -> int:
        """The fewest tokens an example with this review (incl. end + EOS) can have once its paper
        is cut: prompt, cut marker, one paper token, review. Above max_length: ReviewTooLong."""
        return self.fixed_length() + review_tokens + len(self.marker_ids) + 1

    def _trim_paper(self, paper_ids: List[int], budget: int) -> Tuple[List[int], int]:
        """Keep the paper's head within `budget` tokens, marking the cut: (ids, paper tokens kept)."""
        if len(paper_ids) <= budget:
            return paper_ids, len(paper_ids)
        keep = max(0, budget - len(self.marker_ids))
        return paper_ids[:keep] + self.marker_ids, keep

    def encode_prompt(self, paper: str, max_prompt_tokens: int) -> tuple:
        """Prompt ids for generation: paper trimmed so the prompt has at most `max_prompt_tokens`.

        Returns (ids, paper_tokens, paper_kept).
        """
        paper_ids = self.content_ids(paper)
        budget = max_prompt_tokens - self.fixed_length()
        if budget < len(self.marker_ids) + 1:
            raise ValueError(
                f"max_prompt_tokens={max_prompt_tokens} leaves no room for the paper "
                f"(the prompt alone takes {self.fixed_length()} tokens)"
            )
        kept, n_kept = self._trim_paper(paper_ids, budget)
        return self.head_ids + kept + self.tail_ids, len(paper_ids), n_kept

    def encode_example(self, paper: str, review: str, max_length: int, loss_on: str = "review") -> Example:
        """Training ids and labels; raises ReviewTooLong if the review cannot fit whole."""
        paper_ids = self.content_ids(paper)
        review_ids = self.content_ids(review) + self.end_ids
        budget = max_length - self.fixed_length() - len(review_ids)
        if len(paper_ids) > budget and self.shortest_length(len(review_ids)) > max_length:
            raise ReviewTooLong(self.shortest_length(len(review_ids)), max_length)
        kept, n_kept = self._trim_paper(paper_ids, budget)
        prompt_ids = self.head_ids + kept + self.tail_ids
        input_ids = prompt_ids + review_ids
        if loss_on == "review":
            labels = [IGNORE_INDEX] * len(prompt_ids) + review_ids
        elif loss_on == "all":  # the reference recipe: plain causal LM loss on every token
            labels = list(input_ids)
        else:
            raise ValueError(f"loss_on must be 'review' or 'all', got {loss_on!r}")
        return Example(
            input_ids=input_ids,
            labels=labels,
            paper_tokens=len(paper_ids),
            paper_kept=n_kept,
            review_tokens=len(review_ids),
        )


def pad_batch(features: List[dict], pad_token_id: int, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Right-pad input_ids (pad id), labels (-100) and build attention_mask, as torch tensors."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids, labels, mask = [], [], []
    for f in features:
        n = len(f["input_ids"])
        pad = longest - n
        input_ids.append(list(f["input_ids"]) + [pad_token_id] * pad)
        labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        mask.append([1] * n + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
