"""The fast generation engine of `reviewgpt review` (`--engine fast`, the default): continuous batching
over a fixed number of slots with a preallocated KV cache.

transformers' `generate` runs a batch until its longest review ends: with 37 of 38 reviews done near
220 tokens, the batch still ran 1,024 steps. Here each slot holds one paper; when its review ends
(a stop token or max_new_tokens), the slot is prefilled with the next waiting paper in the same
loop, so the decoding batch stays full until papers run out. When they do, the last rows are packed
into the lowest slots and the step runs over that many (rounded up to a power of two, so that few
CUDA graphs cover every count), and over only the keys the longest row has (in quarters of the cache;
the Triton decode kernel of reviewgpt.eval.decode_attention, the default on a GPU, reads each row's own
keys whatever the bucket, so there the bucket is the whole cache).

Slots: `--batch-size` when given, else as many KV caches of the longest prompt + max_new_tokens as
fit in 90% of the GPU's free memory after the prefill's share (8 on a CPU). A paper's tokens are the
tokens transformers' `generate` gives it under greedy decoding (tests/test_engine.py, per family), up
to floating-point rounding; decoding options follow reviewgpt.eval.engine_sampling.

Finished reviews are yielded as they end (`Finished`), so `review` appends each line at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import torch

from reviewgpt.errors import UserError
from reviewgpt.eval import engine_model
from reviewgpt.eval.engine_forward import DecodeStep, KVCache, prefill
from reviewgpt.eval.engine_sampling import Decoding, TokenChooser

log = logging.getLogger(__name__)

MAX_SLOTS = 256
CPU_SLOTS = 8
GiB = 1024 ** 3


@dataclass
class Finished:
    index: int  # into the prompts given to `generate`
    tokens: List[int]  # generated tokens, the stop token included
    finish_reason: str  # "stop" or "length"


@dataclass
class _Row:
    index: int
    prompt_length: int
    generated: List[int] = field(default_factory=list)

    @property
    def position(self) -> int:
        """Position of the last generated token, the one the next step feeds (its key is not cached yet)."""
        return self.prompt_length + len(self.generated) - 1


def cache_capacity(longest_prompt: int, max_new_tokens: int) -> int:
    """Tokens a slot holds: the longest prompt and the longest review, rounded up to 64 (aligned rows)."""
    return -(-(longest_prompt + max_new_tokens) // 64) * 64


DECODE_KERNELS = ("sdpa", "triton")


def default_decode_kernel(device) -> str:
    """$REVIEWGPT_DECODE_KERNEL when set (as vLLM's VLLM_ATTENTION_BACKEND: to compare the two), else
    reviewgpt.eval.decode_attention's kernel on a CUDA GPU where triton >= 3.0 is installed, else SDPA."""
    import os

    from reviewgpt import torch_support

    chosen = os.environ.get("REVIEWGPT_DECODE_KERNEL")
    if chosen:
        if chosen not in DECODE_KERNELS:
            raise UserError(f"REVIEWGPT_DECODE_KERNEL={chosen!r}: set it to one of {', '.join(DECODE_KERNELS)} "
                            "or unset it.")
        return chosen
    return "triton" if torch.device(device).type == "cuda" and not torch_support.triton_problem() else "sdpa"


def _power_of_two_at_least(count: int, cap: int) -> int:
    return min(cap, 1 << max(count - 1, 0).bit_length())


class Engine:
    """Generate for many prompts with one model (`model` as loaded for inference, in eval mode)."""

    def __init__(self, model, slots: Optional[int] = None, prefill_tokens: Optional[int] = None,
                 cuda_graphs: bool = True, bucket_slots: Optional[bool] = None, decode_kernel: Optional[str] = None):
        reason = engine_model.unsupported_reason(model)
        if reason:
            raise ValueError(f"the fast engine cannot run this model: {reason}")
        self.model = model
        self.parts = engine_model.decoder_parts(model)
        self.requested_slots = slots
        self.cuda = self.parts.device.type == "cuda"
        self.prefill_tokens = prefill_tokens or self._default_prefill_tokens()
        self.cuda_graphs = cuda_graphs
        # Steps over a power-of-two count of slots (the rows past the last used one are dead and ignored):
        # few CUDA graphs cover every count. None: when graphs run; a CPU test can ask for it too.
        self.bucket_slots = bucket_slots
        self.decode_kernel = decode_kernel or default_decode_kernel(self.parts.device)
        if self.decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"decode kernel {self.decode_kernel!r}: one of {', '.join(DECODE_KERNELS)}")
        self.stats: dict = {}

    def _default_prefill_tokens(self) -> int:
        if not self.cuda:
            return 8192
        # 5% of free memory: enough tokens to keep the GEMMs large (16K+ for a 7B), little taken from the slots.
        free, _ = torch.cuda.mem_get_info(self.parts.device)
        return int(max(4096, min(32768, 0.05 * free / engine_model.activation_bytes_per_token(self.model))))

    def slots_that_fit(self, longest_prompt: int, max_new_tokens: int, wanted: int = MAX_SLOTS) -> int:
        """How many papers `generate` would decode together (at most `wanted`)."""
        return self._slots(wanted, cache_capacity(longest_prompt, max_new_tokens))

    def _slots(self, wanted: int, capacity: int) -> int:
        if not self.cuda:
            return min(wanted, self.requested_slots or CPU_SLOTS)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.parts.device)
        # A slot's KV cache, plus its rows of float32 logits: the step's output per graph bucket, sampling.
        per_slot = engine_model.kv_bytes_per_token(self.parts) * capacity + 12 * 4 * self.parts.vocab
        reserve = int(1.5 * self.prefill_tokens * engine_model.activation_bytes_per_token(self.model)) + GiB // 2
        fit = engine_model.slots_for_memory(free, per_slot, reserve, min(wanted, self.requested_slots or MAX_SLOTS))
        if fit < 1:
            raise UserError(f"one paper's KV cache ({per_slot / GiB:.2f} GiB for {capacity} tokens) does not fit in "
                            f"the GPU's {free / GiB:.1f} GiB free; lower --max-input-tokens or --max-new-tokens.")
        if self.requested_slots and fit < min(wanted, self.requested_slots):
            log.warning("--batch-size %d: only %d papers' KV caches fit in the GPU's free memory; using %d",
                        self.requested_slots, fit, fit)
        return fit

    def generate(self, prompts: Sequence[Sequence[int]], decoding: Decoding,
                 keys: Optional[Sequence[int]] = None) -> Iterator[Finished]:
        """Each prompt's generation, yielded as it finishes. Prompts are taken in the order given (longest
        first packs the prefill best: `review` sorts them so). `keys` (default: the prompts' indices) name
        each prompt's sampling draws, so a prompt samples the same tokens in any batch."""
        if not prompts:
            return
        capacity = cache_capacity(max(len(p) for p in prompts), decoding.max_new_tokens)
        slots = self._slots(len(prompts), capacity)
        cache_gib = slots * capacity * engine_model.kv_bytes_per_token(self.parts) / GiB
        log.info("fast engine: %d slots of %d tokens (KV cache %.2f GiB), prefill %d tokens a pass, CUDA graphs %s, "
                 "decode attention %s", slots, capacity, cache_gib, self.prefill_tokens,
                 "on" if self.cuda and self.cuda_graphs else "off", self.decode_kernel)
        run = _Run(self, prompts, decoding, slots, capacity, list(range(len(prompts))) if keys is None else keys)
        try:
            yield from run.loop()
        finally:
            self.stats = run.stats()


class _Run:
    """One `Engine.generate`: the slots, the cache and the loop."""

    def __init__(self, engine: Engine, prompts, decoding: Decoding, slots: int, capacity: int, keys):
        self.engine, self.prompts, self.decoding, self.keys = engine, prompts, decoding, keys
        parts = engine.parts
        self.device = parts.device
        self.cache = KVCache(parts, slots, capacity)
        self.step = DecodeStep(parts, self.cache, slots, engine.cuda_graphs, engine.decode_kernel)
        self.chooser = TokenChooser(decoding, slots, parts.vocab, self.device)
        self.rows: List[Optional[_Row]] = [None] * slots
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

    def _finish(self, slot: int, token: int, row: _Row) -> Optional[Finished]:
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
            for slot, index, token in zip(targets, group, host):
                row = _Row(index, len(self.prompts[index]), [token])
                done = self._finish(slot, token, row)
                if done:
                    free.append(slot)
                    finished.append(done)
                else:
                    self.rows[slot] = row
            free.sort()
        return finished

    def _compact(self) -> int:
        """Move the highest rows into the lowest empty slots; the number of slots in use."""
        while True:
            top = max((slot for slot, row in enumerate(self.rows) if row), default=-1)
            hole = next((slot for slot, row in enumerate(self.rows) if row is None), len(self.rows))
            if hole > top:
                return top + 1
            self.cache.move(top, hole, self.rows[top].position)
            self.step.tokens[hole] = self.step.tokens[top]
            self.step.positions[hole] = self.step.positions[top]
            self.chooser.move(top, hole)
            self.rows[hole], self.rows[top] = self.rows[top], None
            self.counts["slot_moves"] += 1

    def _launch(self, used: int) -> tuple:
        """Queue one decoding step over the first `used` slots and its token choice on the GPU (no wait)."""
        bucket = self.engine.bucket_slots if self.engine.bucket_slots is not None else self.step.cuda_graphs
        count = _power_of_two_at_least(used, len(self.rows)) if bucket else used
        needed = max(self.rows[slot].position for slot in range(used)) + 1
        keys = min(self.cache.capacity, -(-needed // self.key_block) * self.key_block)
        if self.step.kernel == "triton":
            keys = self.cache.capacity  # the kernel reads each slot's own keys: one graph per slot count
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
        finished = []
        for slot, token in enumerate(host):
            row = self.rows[slot]
            row.generated.append(token)
            done = self._finish(slot, token, row)
            if done:
                self.rows[slot] = None
                finished.append(done)
        return finished


def generate_fast(loaded, prompts: Sequence[Sequence[int]], decoding: Decoding, slots: Optional[int] = None,
                  keep_adapter: bool = False, keys: Optional[Sequence[int]] = None) -> Iterator[tuple]:
    """(index into prompts, tokens, stop index or None) per prompt as each finishes, for `review`: a run
    folder's adapter is merged in memory first unless `keep_adapter` (reviewgpt.eval.engine_model).
    `keys`: each prompt's sampling key (Engine.generate)."""
    model = loaded.model
    if loaded.kind == "run" and not keep_adapter:
        model, merged, dequantized = engine_model.merge_adapter_in_memory(model)
        log.info("fast engine: LoRA merged into %d linear layers in memory%s", merged,
                 f", {dequantized} 4-bit layers dequantized to {model.dtype}" if dequantized else "")
    engine = Engine(model, slots=slots)
    for done in engine.generate(prompts, decoding, keys):
        yield done.index, done.tokens, (len(done.tokens) - 1 if done.finish_reason == "stop" else None)
    log.info("fast engine: %s", engine.stats)
