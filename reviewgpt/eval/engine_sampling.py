"""Choosing the next token in the fast engine, with the semantics of transformers 4.38.2's `generate`:

- `repetition_penalty` (CTRL): the logit of every token already in the row (prompt + generated) is
  divided by the penalty when positive and multiplied by it when negative (RepetitionPenaltyLogitsProcessor).
  The engine keeps a per-slot "seen" mask over the vocabulary instead of gathering over the ids.
- `no_repeat_ngram_size` n: a token that would complete an n-gram already in the row (prompt included) is
  banned (NoRepeatNGramLogitsProcessor). transformers rebuilds every n-gram of every row at every step
  (7,000 prompt tokens x batch, in Python); the engine keeps a table per slot and adds one n-gram a step.
- sampling (temperature > 0): temperature, then top-k (the model's generation config, 50 by default, as
  `generate` applies it), then top-p, then one draw from the softmax; greedy is the argmax.
Each draw is a function of (seed, the row's key, the row's step): a counter-based hash gives one
uniform number per row and step, and the token is where it falls in the row's cumulative
probabilities. So a paper's review depends on its key (`review` passes a hash of the paper id), the
settings and the seed, not on which papers share its batch, the batch size or a resume that skips
papers already reviewed. The draws are not the ones `generate` would make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    stop_ids: Tuple[int, ...] = ()  # a row ends after generating one of these (kept in its tokens)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 50  # transformers' default when sampling; 0 = off
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0, got {self.temperature!r}, "
                             f"{self.top_p!r}, {self.repetition_penalty!r}")


class NgramTable:
    """The (n-1)-gram -> next tokens seen in one row, grown a token at a time."""

    def __init__(self, size: int, tokens: Sequence[int]):
        self.size = size
        self.history: List[int] = []
        self.table: Dict[tuple, set] = {}
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        self.history.append(token)
        if len(self.history) >= self.size:
            gram = self.history[len(self.history) - self.size:]
            self.table.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def banned(self) -> List[int]:
        if len(self.history) + 1 < self.size:
            return []
        prefix = tuple(self.history[len(self.history) - self.size + 1:]) if self.size > 1 else ()
        return sorted(self.table.get(prefix, ()))


class TokenChooser:
    """The processors and the draw for the engine's slots; `seen` holds the repetition penalty's state."""

    def __init__(self, decoding: Decoding, slots: int, vocab: int, device):
        self.decoding = decoding
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool, device=device) \
            if decoding.repetition_penalty != 1.0 else None
        self.ngrams: List[Optional[NgramTable]] = [None] * slots
        # Sampling state per slot: the row's key and how many tokens it has drawn.
        self.keys = torch.zeros(slots, dtype=torch.int64, device=device)
        self.steps = torch.zeros(slots, dtype=torch.int64, device=device)

    def start(self, slot: int, prompt: torch.Tensor, prompt_list: List[int], key: int = 0) -> None:
        """A new row in `slot`: its prompt is what the processors have seen so far; `key` (< 2**32) names
        the row for its sampling draws."""
        if self.seen is not None:
            self.seen[slot] = False
            self.seen[slot, prompt] = True
        if self.decoding.no_repeat_ngram_size:
            self.ngrams[slot] = NgramTable(self.decoding.no_repeat_ngram_size, prompt_list)
        self.keys[slot] = key & MASK32
        self.steps[slot] = 0

    def move(self, source: int, target: int) -> None:
        if self.seen is not None:
            self.seen[target] = self.seen[source]
        self.ngrams[target], self.ngrams[source] = self.ngrams[source], None
        self.keys[target], self.steps[target] = self.keys[source], self.steps[source]

    def record(self, slots: torch.Tensor, tokens: torch.Tensor, host_slots: List[int], host_tokens: List[int]):
        """The tokens just chosen join their rows' history."""
        if self.decoding.temperature > 0:  # greedy rows draw nothing: no counter on the step's path
            self.steps[slots] += 1
        if self.seen is not None:
            self.seen[slots, tokens] = True
        if self.decoding.no_repeat_ngram_size:
            for slot, token in zip(host_slots, host_tokens):
                self.ngrams[slot].add(token)

    def choose(self, logits: torch.Tensor, slots: torch.Tensor, host_slots: List[int]) -> torch.Tensor:
        """The next token of each row of `logits` (float32, one row per slot in `slots`)."""
        d = self.decoding
        if self.seen is not None:
            seen = self.seen[slots]
            penalized = torch.where(logits < 0, logits * d.repetition_penalty, logits / d.repetition_penalty)
            logits = torch.where(seen, penalized, logits)
        if d.no_repeat_ngram_size:
            rows, banned = [], []
            for row, slot in enumerate(host_slots):
                tokens = self.ngrams[slot].banned()
                rows += [row] * len(tokens)
                banned += tokens
            if banned:
                logits = logits.index_put((torch.tensor(rows, device=logits.device),
                                           torch.tensor(banned, device=logits.device)),
                                          torch.tensor(float("-inf"), device=logits.device))
        if d.temperature == 0:
            return torch.argmax(logits, dim=-1)
        return self._sample(logits, slots)

    def _sample(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        d = self.decoding
        if d.temperature != 1.0:
            logits = logits / d.temperature
        indices = None
        if d.top_k and d.top_k < logits.shape[-1]:
            # Only the top k can survive top-k, so top-p and the draw look at those alone (same result).
            logits, indices = torch.topk(logits, d.top_k, dim=-1)
        if d.top_p < 1.0:
            ascending, order = torch.sort(logits, descending=False)
            cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - d.top_p)
            remove[..., -1:] = False
            logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        cumulative = logits.softmax(dim=-1).double().cumsum(dim=-1)
        # u in [0, total): the first token whose cumulative probability exceeds it has a probability > 0.
        u = uniform(self.decoding.seed, self.keys[slots], self.steps[slots]) * cumulative[:, -1]
        choice = (cumulative <= u[:, None]).sum(dim=-1).clamp(max=logits.shape[-1] - 1)
        return choice if indices is None else indices.gather(1, choice[:, None]).squeeze(1)


MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2**32: no product overflows)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def uniform(seed: int, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One number in [0, 1) per row, a function of (seed, key, step) alone (float64)."""
    x = _mix32(_mix32(_mix32(keys & MASK32) ^ (seed & MASK32)) ^ (steps & MASK32))
    return x.double() / 2.0**32
