"""Records -> token ids for training: the tokenize loop, the torch Dataset trl passes through
untouched, and the collator that right-pads (labels with -100) and counts the real tokens.

The data is tokenized here, not by trl: trl 0.7.11 cuts the tail of each text, i.e. the review
(see `reviewgpt.data.tokenization`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from reviewgpt.data.records import Record
from reviewgpt.data.tokenization import PromptEncoder, ReviewTooLong, pad_batch
from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class TokenizedSplit:
    examples: List[dict] = field(default_factory=list)
    papers_truncated: int = 0
    reviews_skipped: int = 0
    max_tokens: int = 0


def tokenize_records(records: Sequence[Record], encoder: PromptEncoder, recipe: Recipe,
                     desc: str = "tokenizing") -> TokenizedSplit:
    """Records -> input_ids/labels; a review that cannot fit stops or is skipped per the recipe."""
    from tqdm.auto import tqdm

    out = TokenizedSplit()
    for record in tqdm(records, desc=desc, unit="rec", disable=len(records) < 50):
        try:
            ex = encoder.encode_example(record.paper, record.review, recipe.max_seq_length, recipe.loss_on)
        except ReviewTooLong as exc:
            if recipe.on_review_too_long == "skip":
                out.reviews_skipped += 1
                log.warning("%s: skipped: %s", record.source, exc)
                continue
            raise UserError(
                f"{record.source}: {exc}; raise --max-seq-length or pass --on-review-too-long skip "
                "to skip and count such records."
            ) from None
        out.papers_truncated += ex.paper_truncated
        out.max_tokens = max(out.max_tokens, len(ex.input_ids))
        out.examples.append({"input_ids": ex.input_ids, "labels": ex.labels})
    return out


class ListDataset(torch.utils.data.Dataset):
    """A map dataset over pre-tokenized examples (trl 0.7.11 passes torch datasets through untouched)."""

    def __init__(self, examples: List[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


class PadCollator:
    """Right-pads a micro-batch (tokens are counted at the model: logs.TrainedTokens)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: List[dict]) -> dict:
        return pad_batch(features, self.pad_token_id, self.pad_to_multiple_of)
