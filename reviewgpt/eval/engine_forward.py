"""The fast engine's forward passes: the model's own modules, the engine's attention and KV cache.

One preallocated cache holds every slot's keys and values (layers x 2 x slots x kv heads x capacity x
head size), so a decoding step copies nothing: it writes one key and value per slot at that slot's
own position and attends to the keys up to it. Positions are per slot (a prompt starts at 0, as
transformers' `generate` numbers a left-padded row's tokens), so a slot can take a new paper while
the others go on (reviewgpt.eval.engine).

- prefill: several prompts at once, right-padded (causal attention never lets a real token see the
  padding after it, and the padding's keys are overwritten by the tokens generated there before any
  query reaches them), or one long prompt in chunks, each chunk attending to the cache before it;
- decode: one token per slot. The query heads that share a key/value head are attended as rows of
  one query, so grouped keys are read once, never repeated as transformers' `repeat_kv` does.
- decode attention: SDPA with a boolean mask from the positions, or, where triton >= 3.0 runs (a CUDA
  GPU), reviewgpt.eval.decode_attention's split-K kernel, which reads only each slot's own keys (and
  with it the RMSNorms as one kernel each, reviewgpt.eval.fused_norm);
- `DecodeStep` replays a CUDA graph of the decoding step per (slots, keys) bucket on a GPU: a step of
  a 30-layer model is ~750 small kernels, which launched one by one take longer than they run.

The layer layout is transformers 4.38.2's Gemma/Mistral/Llama decoder layer: norm, attention, residual,
norm, MLP, residual. Rotary embeddings are the model's own module and `apply_rotary_pos_emb` (Mistral's
takes a length and position ids, Gemma's and Llama's position ids), so the numbers are the model's;
the cos and sin are computed once a pass, not once a layer.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import List, Optional

import torch
from torch.nn import functional

log = logging.getLogger(__name__)


DEAD = -1  # the position of a slot without a row: `decode` computes its row; the Triton kernel reads no key


class KVCache:
    def __init__(self, parts, slots: int, capacity: int):
        # Zeros, not empty: a masked key or value is still multiplied by 0, and 0 x NaN is NaN.
        self.data = torch.zeros(len(parts.layers), 2, slots, parts.kv_heads, capacity, parts.head_dim,
                                dtype=parts.dtype, device=parts.device)
        self.capacity = capacity

    def move(self, source: int, target: int, length: int) -> None:
        """Slot `target` takes slot `source`'s first `length` keys and values."""
        self.data[:, :, target, :, :length] = self.data[:, :, source, :, :length]


def _rotary(parts, positions, capacity: int):
    """The rotation at `positions` (rows x tokens): a function of (q, k). Every layer's rotary module is
    built from the same config, so the cos and sin are computed once a pass from the first layer's
    (per layer, they were ~8 of a decoding step's ~45 kernels per layer)."""
    attention = parts.layers[0].self_attn
    module = sys.modules[type(attention).__module__]
    like = torch.empty(0, dtype=parts.dtype, device=positions.device)  # the module reads its dtype and device
    if parts.family == "mistral":
        cos, sin = attention.rotary_emb(like, seq_len=capacity)
        # Mistral's apply_rotary_pos_emb gathers cos[positions] at every call: gathered once here, the
        # rest is its formula, which is Llama's.
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = cos[positions], sin[positions]
        return lambda q, k: apply_rotary_pos_emb(q, k, cos, sin)
    cos, sin = attention.rotary_emb(like, positions)
    return lambda q, k: module.apply_rotary_pos_emb(q, k, cos, sin)


def _project(attention, parts, hidden):
    batch, length, _ = hidden.shape

    def heads(projection, count):
        return projection(hidden).view(batch, length, count, parts.head_dim).transpose(1, 2)

    return (heads(attention.q_proj, parts.heads), heads(attention.k_proj, parts.kv_heads),
            heads(attention.v_proj, parts.kv_heads))


def _module_norm(norm, hidden):
    return norm(hidden)


def _layer(layer, hidden, attend, norm=_module_norm):
    residual = hidden
    hidden = residual + attend(layer.self_attn, norm(layer.input_layernorm, hidden))
    return hidden + layer.mlp(norm(layer.post_attention_layernorm, hidden))


def _embed(parts, ids):
    hidden = parts.embed(ids)
    return hidden * parts.embed_scale if parts.embed_scale is not None else hidden


def _logits(parts, hidden):
    return parts.head(parts.norm(hidden)).float()


def allowed_keys(query_positions, keys: int, window: Optional[int]):
    """Boolean (..., keys): key j is seen from a query at position p when j <= p (and p - j < window)."""
    key_positions = torch.arange(keys, device=query_positions.device)
    allowed = key_positions <= query_positions[..., None]
    if window is not None:
        allowed &= key_positions > query_positions[..., None] - window
    return allowed


@torch.no_grad()
def prefill(parts, cache: KVCache, slots: List[int], ids, start: int, last: Optional[List[int]]):
    """Run prompt tokens `ids` (rows x tokens, right-padded) at positions start.. into `slots`; the
    logits at each row's index in `last` (None: a chunk that is not a prompt's last)."""
    rows, length = ids.shape
    device = ids.device
    slot_index = torch.tensor(slots, device=device)
    positions = torch.arange(start, start + length, device=device).expand(rows, length)
    whole = start + length
    mask = None
    if start or (parts.window is not None and whole > parts.window):
        if start and rows != 1:
            raise ValueError("a prompt continued from the cache is prefilled one at a time")
        mask = allowed_keys(positions[0], whole, parts.window)  # the same for every row
    from transformers.models.llama.modeling_llama import repeat_kv  # Gemma's and Mistral's are copies

    rotate = _rotary(parts, positions, cache.capacity)

    def attend(attention, hidden):
        q, k, v = _project(attention, parts, hidden)
        q, k = rotate(q, k)
        keys, values = cache.data[attention.layer_idx]
        keys[slot_index, :, start:whole] = k
        values[slot_index, :, start:whole] = v
        if start:
            k, v = keys[slots[0]:slots[0] + 1, :, :whole], values[slots[0]:slots[0] + 1, :, :whole]
        k, v = repeat_kv(k, attention.num_key_value_groups), repeat_kv(v, attention.num_key_value_groups)
        if mask is not None and q.device.type == "cuda":
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # pytorch#112577, as transformers does
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return attention.o_proj(out.transpose(1, 2).reshape(rows, length, -1))

    hidden = _embed(parts, ids)
    for layer in parts.layers:
        hidden = _layer(layer, hidden, attend)
    if last is None:
        return None
    return _logits(parts, hidden[torch.arange(rows, device=device), torch.tensor(last, device=device)])


@torch.no_grad()
def decode(parts, cache: KVCache, tokens, positions, rows, keys: int, kernel: str = "sdpa"):
    """One token per slot (`tokens` at `positions`, slots `rows`), attending to the first `keys` keys of
    each slot; logits (slots x vocab) in float32. A slot at position -1 is dead: its row is computed
    and ignored, and the Triton kernel reads none of its keys. `kernel`: "sdpa" (a boolean mask over the `keys`
    keys of every slot) or "triton" (reviewgpt.eval.decode_attention: each slot's own keys only; `keys`
    is ignored)."""
    count = tokens.shape[0]
    groups = parts.heads // parts.kv_heads
    norm = _module_norm
    if kernel == "triton":
        from reviewgpt.eval.decode_attention import decode_attention
        from reviewgpt.eval.fused_norm import rms_norm as norm

        lengths = positions + 1  # a dead slot's position is -1: it reads no key
    positions = positions.clamp(min=0)  # a dead slot computes a row nobody reads, at position 0 of its own cache
    query_positions = positions[:, None]
    rotate = _rotary(parts, query_positions, cache.capacity)
    if kernel != "triton":
        mask = allowed_keys(query_positions, keys, parts.window)[:, None]  # (slots, 1, 1, keys)

    def attend(attention, hidden):
        q, k, v = _project(attention, parts, hidden)
        q, k = rotate(q, k)
        cached_keys, cached_values = cache.data[attention.layer_idx]
        cached_keys[rows, :, positions] = k[:, :, 0]
        cached_values[rows, :, positions] = v[:, :, 0]
        # Query heads 0..groups-1 share kv head 0, and so on (repeat_kv's order): one query of `groups` rows.
        q = q.reshape(count, parts.kv_heads, groups, parts.head_dim)
        if kernel == "triton":
            out = decode_attention(q, cached_keys[:count], cached_values[:count], lengths, parts.window)
        else:
            out = functional.scaled_dot_product_attention(q, cached_keys[:count, :, :keys],
                                                          cached_values[:count, :, :keys], attn_mask=mask)
        return attention.o_proj(out.reshape(count, 1, -1))

    hidden = _embed(parts, tokens[:, None])
    for layer in parts.layers:
        hidden = _layer(layer, hidden, attend, norm)
    return _logits(parts, hidden[:, 0])


class DecodeStep:
    """The decoding step over the first n slots, from the static `tokens` and `positions` buffers;
    on a GPU replayed from a CUDA graph captured once per (n, keys) bucket."""

    def __init__(self, parts, cache: KVCache, slots: int, cuda_graphs: bool, kernel: str = "sdpa"):
        self.parts, self.cache, self.kernel = parts, cache, kernel
        device = parts.device
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.positions = torch.full((slots,), DEAD, dtype=torch.long, device=device)
        self.rows = torch.arange(slots, device=device)
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.kernel_ran = False  # until the kernel has run once, a failure of the Triton kernel falls back to SDPA
        self.graphs, self.outputs, self.pool = {}, {}, None
        self.capture_seconds = 0.0  # warm-up runs (Triton's compilation included) and captures

    def _eager(self, count: int, keys: int):
        try:
            output = decode(self.parts, self.cache, self.tokens[:count], self.positions[:count], self.rows[:count],
                            keys, self.kernel)
        except Exception as exc:  # noqa: BLE001 - a Triton kernel that does not compile here: SDPA decodes
            if self.kernel != "triton" or self.kernel_ran or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            log.warning("the Triton decode attention failed (%s: %s); decoding with SDPA's attention",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.kernel = "sdpa"
            return self._eager(count, keys)
        self.kernel_ran = True
        return output

    @torch.no_grad()
    def __call__(self, count: int, keys: int):
        if not self.cuda_graphs:
            return self._eager(count, keys)
        bucket = (count, keys)
        if bucket not in self.graphs:
            started = time.perf_counter()
            try:
                self._capture(bucket)
            except Exception as exc:  # noqa: BLE001 - any kernel that cannot be captured: run eagerly
                log.warning("CUDA graph capture of the decoding step failed (%s: %s); decoding without graphs",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.cuda_graphs = False
                torch.cuda.synchronize()
                return self._eager(count, keys)
            finally:
                torch.cuda.synchronize()
                self.capture_seconds += time.perf_counter() - started
        self.graphs[bucket].replay()
        return self.outputs[bucket]

    def _capture(self, bucket) -> None:
        # Warm-up runs write the same keys and values the replay will (same tokens and positions).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._eager(*bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self._eager(*bucket)
        self.pool = graph.pool()
        self.graphs[bucket], self.outputs[bucket] = graph, output
