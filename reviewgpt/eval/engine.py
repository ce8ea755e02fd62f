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

Finished reviews are yielded as they end (`Finished`), so `review` appends each line at once. The loop
itself (slots, prefill, steps, packing) is reviewgpt.eval.engine_run.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional, Sequence

import torch

from reviewgpt.errors import UserError
from reviewgpt.eval import engine_model
from reviewgpt.eval.engine_run import Finished, Run
from reviewgpt.eval.engine_sampling import Decoding

log = logging.getLogger(__name__)

MAX_SLOTS = 256
CPU_SLOTS = 8
GiB = 1024 ** 3


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
        run = Run(self, prompts, decoding, slots, capacity, list(range(len(prompts))) if keys is None else keys)
        try:
            yield from run.loop()
        finally:
            self.stats = run.stats()


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
