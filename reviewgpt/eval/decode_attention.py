"""The fast engine's decoding attention as one Triton kernel pair (split-K, "flash-decoding"): each
slot attends to its own keys only, read once.

Why: a decoding step is bounded by reading the KV cache. `scaled_dot_product_attention` with a boolean
mask (what reviewgpt.eval.engine_forward.decode does without triton) reads every slot's keys up to
the step's key bucket, masked or not, including the dead rows past the live ones, and parallelizes
over slots x heads only: with few slots left, most of the GPU idles through an 8K-token cache. Here
the cache of each (slot, kv head) is cut into chunks (`keys_per_split`), one program per chunk: a program reads
only the keys its slot has (positions [length - window, length), `lengths` read on the GPU, so the
launch is the same at every step and a CUDA graph replays it), and a dead slot (length 0) reads
nothing. The query heads that share a KV head are the rows of one tile, so grouped keys are read once.
A second kernel combines the chunks' partial softmaxes (log-sum-exp weights).

Numerics: scores and the softmax in fp32, as SDPA's kernels; the probabilities are rounded to the
cache's dtype before the product with the values (as flash attention does), so in bf16 a step can
differ from SDPA's by a bf16 rounding; in fp32 the products are IEEE fp32 (no TF32), equal to SDPA up to
the order of the sums (tests/test_decode_attention.py). With TRITON_INTERPRET=1 set before triton is
imported it runs on CPU tensors in triton's interpreter (the tests), its products in fp32 whatever the
dtype: the interpreter multiplies bf16 tiles wrong.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MIN_KEYS_PER_SPLIT = 256  # a chunk is at least this long (at most 32 chunks per slot and head at 8K)
PROGRAMS = 2048  # enough programs to fill an H200's 132 SMs many times over; fewer chunks when slots do it
BLOCK_KEYS = 64  # the chunks are multiples of it
# Per head size (padded to a power of two): keys per loaded tile, warps, pipeline stages; gemma's 256-wide
# heads take half the keys per tile, so that two stages fit in shared memory. bench/decode_kernel.py
# times the candidates on an H200: for SmolLM2's 64-wide heads (128, 4, 2) was 8% faster alone and no
# faster in a whole run (docs/performance.md), so these stay.
TILES = {16: (64, 4, 2), 32: (64, 4, 2), 64: (64, 4, 2), 128: (64, 4, 2), 256: (32, 4, 2)}


@triton.jit
def _partial_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, out_ptr, lse_ptr,
                    stride_q_slot, stride_q_head, stride_q_group,
                    stride_k_slot, stride_k_head, stride_k_key,
                    stride_v_slot, stride_v_head, stride_v_key,
                    groups, head_dim, keys_per_split, window, scale,
                    HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    slot = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    heads = tl.num_programs(1)
    length = tl.load(lengths_ptr + slot).to(tl.int32)
    low = split * keys_per_split
    high = tl.minimum(low + keys_per_split, length)
    if HAS_WINDOW:
        low = tl.maximum(low, length - window)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_in = g < groups
    d_in = d < head_dim
    q = tl.load(q_ptr + slot.to(tl.int64) * stride_q_slot + head * stride_q_head + g[:, None] * stride_q_group
                + d[None, :], mask=g_in[:, None] & d_in[None, :], other=0.0)
    k_base = k_ptr + slot.to(tl.int64) * stride_k_slot + head.to(tl.int64) * stride_k_head
    v_base = v_ptr + slot.to(tl.int64) * stride_v_slot + head.to(tl.int64) * stride_v_head

    best = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(low, high, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_in = n < high
        k = tl.load(k_base + n[:, None].to(tl.int64) * stride_k_key + d[None, :],
                    mask=n_in[:, None] & d_in[None, :], other=0.0)
        if IEEE:
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(n_in[None, :], scores * scale, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))  # finite: every block has a key in range
        p = tl.exp(scores - new_best[:, None])
        shrink = tl.exp(best - new_best)
        total = total * shrink + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None].to(tl.int64) * stride_v_key + d[None, :],
                    mask=n_in[:, None] & d_in[None, :], other=0.0)
        if IEEE:
            acc = acc * shrink[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * shrink[:, None] + tl.dot(p.to(v.dtype), v)
        best = new_best

    seen = total > 0  # a chunk past the slot's length (or a dead slot) saw no key
    out = acc / tl.where(seen, total, 1.0)[:, None]
    lse = tl.where(seen, best + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    row = (slot.to(tl.int64) * heads + head) * splits + split  # out: (slots, heads, splits, BLOCK_G, BLOCK_D)
    tl.store(out_ptr + row * BLOCK_G * BLOCK_D + g[:, None] * BLOCK_D + d[None, :], out,
             mask=g_in[:, None] & d_in[None, :])  # the padding rows and columns are never read
    tl.store(lse_ptr + row * BLOCK_G + g, lse, mask=g_in)


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, out_ptr, stride_o_slot, stride_o_head, stride_o_group,
                    groups, head_dim, splits,
                    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    slot = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_in = g < groups
    inside = g_in[:, None] & (d < head_dim)[None, :]
    first = (slot.to(tl.int64) * heads + head) * splits
    best = tl.full([BLOCK_G], float("-inf"), tl.float32)
    for split in range(0, splits):
        best = tl.maximum(best, tl.load(lse_ptr + (first + split) * BLOCK_G + g, mask=g_in, other=float("-inf")))
    anchor = tl.where(best == float("-inf"), 0.0, best)  # a dead slot: every weight 0, output 0
    weight_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for split in range(0, splits):
        weight = tl.exp(tl.load(lse_ptr + (first + split) * BLOCK_G + g, mask=g_in, other=float("-inf")) - anchor)
        part = tl.load(part_ptr + (first + split) * BLOCK_G * BLOCK_D + g[:, None] * BLOCK_D + d[None, :],
                       mask=inside, other=0.0)
        acc += part * weight[:, None]
        weight_sum += weight
    out = acc / tl.where(weight_sum > 0, weight_sum, 1.0)[:, None]
    tl.store(out_ptr + slot.to(tl.int64) * stride_o_slot + head * stride_o_head + g[:, None] * stride_o_group
             + d[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)


def _interpreted() -> bool:
    # triton's interpreter multiplies bf16 tiles wrong (its numpy has no bf16): there the products run in fp32.
    return os.environ.get("TRITON_INTERPRET") == "1"


def _at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot's smallest tile side


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def keys_per_split(capacity: int, slots: int, heads: int) -> int:
    """The chunk one program reads: the cache cut into as many chunks as it takes for slots x heads x
    chunks to reach PROGRAMS, each at least MIN_KEYS_PER_SPLIT keys, a multiple of BLOCK_KEYS. A CUDA
    graph is captured per slot count, so the launch's shape is fixed per graph."""
    splits = max(1, min(_ceil_div(PROGRAMS, slots * heads), _ceil_div(capacity, MIN_KEYS_PER_SPLIT)))
    return _ceil_div(_ceil_div(capacity, splits), BLOCK_KEYS) * BLOCK_KEYS


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                     window=None) -> torch.Tensor:
    """Attention of one query token per slot to its cached keys.

    q: (slots, kv heads, groups, head size), the query heads grouped by the KV head they share;
    keys, values: (slots, kv heads, capacity, head size), the cache of the first `slots` slots (rows
    may be longer: only the first `lengths[i]` keys of slot i are read); lengths: (slots,) int, on the
    GPU; window: keys a query sees, itself included (None: all). Returns q's shape, in q's dtype.
    """
    slots, heads, groups, head_dim = q.shape
    if keys.stride(-1) != 1 or values.stride(-1) != 1 or keys.shape[:2] != (slots, heads):
        raise ValueError("decode_attention needs the cache as (slots, kv heads, capacity, head size), rows contiguous")
    q = q.contiguous()
    chunk = keys_per_split(keys.shape[2], slots, heads)
    splits = _ceil_div(keys.shape[2], chunk)
    block_g, block_d = _at_least_16(groups), _at_least_16(head_dim)
    block_n, warps, stages = TILES[block_d]
    part = torch.empty(slots, heads, splits, block_g, block_d, dtype=torch.float32, device=q.device)
    lse = torch.empty(slots, heads, splits, block_g, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    _partial_kernel[(slots, heads, splits)](
        q, keys, values, lengths, part, lse,
        q.stride(0), q.stride(1), q.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2),
        groups, head_dim, chunk, window or 0, head_dim ** -0.5,
        HAS_WINDOW=window is not None, IEEE=q.dtype == torch.float32 or _interpreted(),
        BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    _combine_kernel[(slots, heads)](part, lse, out, out.stride(0), out.stride(1), out.stride(2),
                                    groups, head_dim, splits, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=4)
    return out
