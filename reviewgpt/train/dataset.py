"""Records -> token ids for training: the tokenize loop, the run's sample order, the torch Dataset
trl passes through untouched, and the collator that right-pads (labels with -100).

The data is tokenized here, not by trl: trl 0.7.11 cuts the tail of each text, i.e. the review
(see `reviewgpt.data.tokenization`).

The order is the run's, not the Trainer's (`run_order`): epoch after epoch, each shuffled by
`random.Random(seed + epoch)`, and optimizer step k trains on samples [k x B, (k + 1) x B) of that
sequence (B the effective batch), whichever micro-batch split makes up B. The Trainer reads it in
order as one long epoch. transformers 4.38.2 shuffles per epoch from the global RNG and, on resume,
places itself by `global_step // (batches // accumulation)`: when an epoch's batches are not a
multiple of the accumulation (1,221 ICLR records at 8 x 2) or dropout draws from that RNG between
epochs, a resumed run trained on other samples than the uninterrupted one, and a run resumed at
its last step trained one more. Read as one epoch, the resume skips exactly the samples trained.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from reviewgpt.data.rating import training_review
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
    reviews_without_rating: int = 0  # recipe.review_rating: records trained without a rating line


def tokenize_records(records: Sequence[Record], encoder: PromptEncoder, recipe: Recipe,
                     desc: str = "tokenizing") -> TokenizedSplit:
    """Records -> input_ids/labels; a review that cannot fit stops or is skipped per the recipe. With
    `recipe.review_rating` a review ends with its record's rating line (reviewgpt.data.rating)."""
    from tqdm.auto import tqdm

    out = TokenizedSplit()
    for record in tqdm(records, desc=desc, unit="rec", disable=len(records) < 50):
        review = training_review(record, recipe.review_rating)
        out.reviews_without_rating += recipe.review_rating and record.rating is None
        try:
            ex = encoder.encode_example(record.paper, review, recipe.max_seq_length, recipe.loss_on)
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
    if out.reviews_without_rating:
        log.warning("%s: %d of %d review(s) have no rating 1-10 and are trained without a rating line "
                    "(review_rating)", desc, out.reviews_without_rating, len(records))
    return out


def planned_steps(n_examples: int, recipe: Recipe) -> int:
    """Optimizer steps of the run: max_steps, else num_train_epochs x the examples / the effective batch
    (at least one step)."""
    if recipe.max_steps > 0:
        return recipe.max_steps
    return max(1, math.floor(recipe.num_train_epochs * n_examples / recipe.effective_batch_size))


def run_order(examples: List[dict], steps: int, effective_batch: int, seed: int) -> List[dict]:
    """The samples of the whole run in training order: as many epochs as `steps` need, each a
    shuffle of `examples` by `random.Random(seed + epoch)` (the same on every Python and torch),
    cut at steps x effective batch. A longer run's order starts with a shorter one's."""
    needed, order, epoch = steps * effective_batch, [], 0
    while len(order) < needed:
        indices = list(range(len(examples)))
        random.Random(seed + epoch).shuffle(indices)
        order.extend(examples[i] for i in indices)
        epoch += 1
    return order[:needed]


def in_order(trainer) -> None:
    """Make the Trainer read its train dataset in order (the run's order, `run_order`) instead of
    shuffling it: an instance attribute over `Trainer._get_train_sampler`, read by
    `get_train_dataloader`; under several processes accelerate still shards the batches."""
    trainer._get_train_sampler = lambda: torch.utils.data.SequentialSampler(trainer.train_dataset)


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
