"""The fast engine's loop (reviewgpt.eval.engine): the slots, the preallocated cache, prefill and decoding
steps, packing at the tail, and the hand-out of finished reviews.

Each loop turn: waiting papers are prefilled into free slots; the live rows are packed into the lowest
slots; one decoding step is launched over them (a power-of-two count of slots where CUDA graphs run);
the reviews that ended at the previous step are handed to the caller while the GPU runs that step;
then the step's tokens are collected and the rows that ended leave their slots.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import torch

from reviewgpt.eval.engine_forward import DEAD, DecodeStep, KVCache, prefill
from reviewgpt.eval.engine_sampling import Decoding, TokenChooser


@dataclass
class Finished:
    index: int  # into the prompts given to `generate`
    tokens: List[int]  # generated tokens, the stop token included
    finish_reason: str  # "stop" or "length"


@dataclass
class Row:
    index: int
    prompt_length: int
    generated: List[int] = field(default_factory=list)

    @property
    def position(self) -> int:
        """Position of the last generated token, the one the next step feeds (its key is not cached yet)."""
        return self.prompt_length + len(self.generated) - 1


def _power_of_two_at_least(count: int, cap: int) -> int:
    return min(cap, 1 << max(count - 1, 0).bit_length())


class Run:
    """One `Engine.generate` (reviewgpt.eval.engine.Engine: its parts, options and prefill budget)."""

    def __init__(self, engine, prompts, decoding: Decoding, slots: int, capacity: int, keys):
        self.engine, self.prompts, self.decoding, self.keys = engine, prompts, decoding, keys
        parts = engine.parts
        self.device = parts.device
        self.cache = KVCache(parts, slots, capacity)
        self.step = DecodeStep(parts, self.cache, slots, engine.cuda_graphs, engine.decode_kernel)
        self.chooser = TokenChooser(decoding, slots, parts.vocab, self.device)
        self.rows: List[Optional[Row]] = [None] * slots
        self.waiting = deque(range(len(prompts)))
        self.stop_ids = set(decoding.stop_ids)
        self.key_block = max(256, capacity // 4 // 256 * 256)  # steps attend to a quarter of the cache at a time
        # Where a run's wall time goes: prefill and decode passes (each up to its tokens on the host, not
        # counting the GPU time the consumer overlaps), the consumer of the finished reviews (`review`
        # writing lines, while the next step runs on the GPU), and the rest (setup, bookkeeping).
        self.counts = {"prefill_passes": 0, "prefill_tokens": 0, "decode_steps": 0, "padded_steps": 0, "slot_moves": 0,
                       "prefill_seconds": 0.0, "decode_seconds": 0.0, "capture_seconds": 0.0, "consumer_seconds": 0.0,
                       "wall_seconds": 0.0}
        self.created = time.perf_counter()
        self.step_shapes = set()  # (slots, keys) of the steps run: the CUDA graphs a run needs
        self.used, self.repack = 0, True  # slots in use after the last packing; whether rows changed since

    def stats(self) -> dict:
        counts = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.counts.items()}
        return {"slots": len(self.rows), "capacity": self.cache.capacity, "cuda_graphs": self.step.cuda_graphs,
                "decode_kernel": self.step.kernel,
                "graph_buckets": len(self.step.graphs), "step_shapes": sorted(self.step_shapes), **counts}

    def loop(self) -> Iterator[Finished]:
        # Reviews that end at a step are handed out after the next step is launched: the caller's work
        # (`review` decodes the text and appends its line) runs while the GPU decodes, not between steps.
        try:
            finished: List[Finished] = []
            while self.waiting or any(self.rows):
                finished += self._fill()
                used = self._compact()
                step = self._launch(used) if used else None
                yield from self._handed_out(finished)
                finished = self._collect(*step) if step else []
            yield from self._handed_out(finished)
        finally:
            self.counts["wall_seconds"] = time.perf_counter() - self.created
            self.counts["capture_seconds"] = self.step.capture_seconds

    def _handed_out(self, finished: List[Finished]) -> Iterator[Finished]:
        for done in finished:
            paused = time.perf_counter()
            yield done  # the caller's time until it asks for the next one is not the engine's
            self.counts["consumer_seconds"] += time.perf_counter() - paused

    def _finish(self, slot: int, token: int, row: Row) -> Optional[Finished]:
        if token in self.stop_ids:
            return Finished(row.index, row.generated, "stop")
        if len(row.generated) >= self.decoding.max_new_tokens:
            return Finished(row.index, row.generated, "length")
        return None

    def _take_group(self, free: int) -> List[int]:
        """Waiting prompts for one prefill pass: rows x longest within the token budget."""
        group = [self.waiting.popleft()]
        longest = len(self.prompts[group[0]])
        while self.waiting and len(group) < free:
            longest_with_next = max(longest, len(self.prompts[self.waiting[0]]))
            if (len(group) + 1) * longest_with_next > self.engine.prefill_tokens:
                break
            longest = longest_with_next
            group.append(self.waiting.popleft())
        return group

    @torch.no_grad()
    def _prefill(self, group: List[int], targets: List[int]):
        parts, budget = self.engine.parts, self.engine.prefill_tokens
        lengths = [len(self.prompts[i]) for i in group]
        width = max(lengths)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        for row, index in enumerate(group):
            ids[row, :lengths[row]] = torch.as_tensor(list(self.prompts[index]), dtype=torch.long)
        ids = ids.to(self.device)
        self.counts["prefill_passes"] += 1
        self.counts["prefill_tokens"] += sum(lengths)
        if width <= budget:
            return prefill(parts, self.cache, targets, ids, 0, [n - 1 for n in lengths])
        for start in range(0, width, budget):  # one long prompt, a chunk at a time
            last = [width - 1 - start] if start + budget >= width else None
            logits = prefill(parts, self.cache, targets, ids[:, start:start + budget], start, last)
        return logits

    def _fill(self) -> List[Finished]:
        """Prefill waiting papers into the free slots; the rows that end at their first token."""
        finished = []
        if not self.waiting:
            return finished
        free = [slot for slot, row in enumerate(self.rows) if row is None]
        while self.waiting and free:
            group = self._take_group(len(free))
            targets, free = free[:len(group)], free[len(group):]
            started = time.perf_counter()
            logits = self._prefill(group, targets)
            slots = torch.tensor(targets, device=self.device)
            for slot, index in zip(targets, group):
                prompt = list(self.prompts[index])
                self.chooser.start(slot, torch.tensor(prompt, device=self.device), prompt, self.keys[index])
            with torch.no_grad():
                first = self.chooser.choose(logits, slots, targets)
                self.step.tokens[slots] = first
                self.step.positions[slots] = torch.tensor([len(self.prompts[i]) for i in group], device=self.device)
            host = first.tolist()  # waits for the GPU: the pass's time is its time
            self.counts["prefill_seconds"] += time.perf_counter() - started
            self.chooser.record(slots, first, targets, host)
            ended = []
            for slot, index, token in zip(targets, group, host):
                row = Row(index, len(self.prompts[index]), [token])
                done = self._finish(slot, token, row)
                if done:
                    ended.append(slot)
                    finished.append(done)
                else:
                    self.rows[slot] = row
            if ended:
                self._mark_dead(ended)
            free = sorted(free + ended)
            self.repack = True
        return finished

    def _compact(self) -> int:
        """Move the highest rows into the lowest empty slots; the number of slots in use."""
        if not self.repack:  # no row left or came since the last packing (most steps): O(1), not O(slots)
            return self.used
        self.repack = False
        while True:
            top = max((slot for slot, row in enumerate(self.rows) if row), default=-1)
            hole = next((slot for slot, row in enumerate(self.rows) if row is None), len(self.rows))
            if hole > top:
                self.used = top + 1
                return self.used
            self.cache.move(top, hole, self.rows[top].position)
            self.step.tokens[hole] = self.step.tokens[top]
            self.step.positions[hole] = self.step.positions[top]
            self.step.positions[top] = DEAD
            self.chooser.move(top, hole)
            self.rows[hole], self.rows[top] = self.rows[top], None
            self.counts["slot_moves"] += 1

    def _launch(self, used: int) -> tuple:
        """Queue one decoding step over the first `used` slots and its token choice on the GPU (no wait)."""
        bucket = self.engine.bucket_slots if self.engine.bucket_slots is not None else self.step.cuda_graphs
        count = _power_of_two_at_least(used, len(self.rows)) if bucket else used
        if self.step.kernel == "triton":
            keys = self.cache.capacity  # the kernel reads each slot's own keys: one graph per slot count
        else:
            needed = max(self.rows[slot].position for slot in range(used)) + 1
            keys = min(self.cache.capacity, -(-needed // self.key_block) * self.key_block)
        self.counts["decode_steps"] += 1
        self.counts["padded_steps"] += count > used
        self.step_shapes.add((count, keys))
        started = time.perf_counter()
        with torch.no_grad():
            slots = self.step.rows[:used]
            logits = self.step(count, keys)[:used]
            chosen = self.chooser.choose(logits, slots, list(range(used)))
            self.step.tokens[:used] = chosen
            self.step.positions[:used] += 1
        self.counts["decode_seconds"] += time.perf_counter() - started
        return used, slots, chosen

    def _collect(self, used: int, slots, chosen) -> List[Finished]:
        """Wait for a launched step's tokens; they join their rows; the rows that ended."""
        started = time.perf_counter()
        host = chosen.tolist()  # waits for the GPU
        self.counts["decode_seconds"] += time.perf_counter() - started
        self.chooser.record(slots, chosen, list(range(used)), host)
        finished, ended = [], []
        for slot, token in enumerate(host):
            row = self.rows[slot]
            row.generated.append(token)
            done = self._finish(slot, token, row)
            if done:
                self.rows[slot] = None
                ended.append(slot)
                finished.append(done)
        if ended:
            self._mark_dead(ended)
            self.repack = True
        return finished

    def _mark_dead(self, slots: List[int]) -> None:
        # A step runs over a power-of-two count of slots: the dead ones among them must not read the
        # keys their last row left (up to 39 of 128 slots at 8K tokens in a run's tail, a third of the
        # KV reads). Position -1: the Triton kernel reads nothing there (engine_forward.decode).
        self.step.positions[torch.tensor(slots, device=self.device)] = DEAD
