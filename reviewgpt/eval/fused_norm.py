"""RMSNorm as one Triton kernel, for the fast engine's decoding steps on a GPU.

Why: transformers 4.38.2's Llama/Mistral/Gemma RMSNorm is 7 kernels (cast, square, mean, add, rsqrt,
multiply, cast and scale), twice a layer: 420 of a 30-layer decoding step's ~1,100 kernels, each a few
microseconds on 256 x 576 numbers even when a CUDA graph replays them. Here: one.

The arithmetic is the module's, in its order: the row in fp32, its mean square (a sum times 1/n, as
torch's mean), x * rsqrt(mean + eps); then Llama and Mistral round that to the input's dtype and
multiply by the weight; Gemma rounds it and multiplies by (1 + weight) rounded to the weight's dtype.
Only the order of the sum differs from torch's reduction, so an output can differ in its last bit
(tests/test_decode_attention.py compares it with the module's). Used where the Triton decode
attention is (reviewgpt.eval.engine_forward.decode), for norms whose weight has the input's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, n, eps,
                     GEMMA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    mean_square = tl.sum(x * x, 0) * (1.0 / n)
    normed = (x * tl.math.rsqrt(mean_square + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(w_ptr + cols, mask=inside, other=0.0)
    if GEMMA:
        weight = (1.0 + weight.to(tl.float32)).to(w_ptr.dtype.element_ty)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def fusable(norm, x: torch.Tensor) -> bool:
    """A Llama/Mistral/Gemma RMSNorm whose weight has x's dtype (else the module's own type promotion
    applies: run the module)."""
    return norm.weight.dtype == x.dtype and _eps(norm) is not None and x.shape[-1] == norm.weight.shape[0]


def _eps(norm):
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", None))


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """What `norm(x)` returns, in one kernel; `norm` is the model's RMSNorm module."""
    if not fusable(norm, x):
        return norm(x)
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty_like(rows)
    n = rows.shape[-1]
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(rows.shape[0],)](rows, norm.weight, out, rows.stride(0), out.stride(0), n, float(_eps(norm)),
                                       GEMMA=type(norm).__name__.startswith("Gemma"), BLOCK=block,
                                       num_warps=4 if block <= 1024 else 8)
    return out.view(x.shape)
