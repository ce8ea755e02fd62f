"""Triton kernels for the element-wise work around the GEMMs: the gated MLP activation, RoPE and
RMSNorm, each as an autograd Function with its own backward.

Why: with every layer kept from recompute, gemma-7b at 8K spends a fifth of a step in element-wise
passes that transformers 4.38.2 writes as chains of small ops: Gemma's RMSNorm is eight passes in
fp32 (and keeps an fp32 copy of its input), RoPE is a slice, a negation, a concatenation and three
products per tensor, the GeGLU two passes forward and five backward over sequence x 24576 tensors.
Each kernel here reads its inputs once and writes its outputs once, in fp32 registers, rounding
once at the end; each backward is one more such pass.

The math is the modules' own; the rounding differs by at most a bf16 step where the original
rounded between ops (tests/test_triton_kernels.py compares loss and gradients with the unpatched
modules). Imported only where triton >= 3.0 is installed (reviewgpt.train.speed.kernels decides). With
TRITON_INTERPRET=1 set before triton is imported, they run on CPU tensors in triton's interpreter:
slow, for the tests only (the interpreter casts fp32 to bf16 by truncation where the GPU rounds to
nearest, so the CPU tests' bf16 tolerances allow a step of either).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from reviewgpt.train.speed.mlp import backward_once

GELU, GELU_TANH, SILU = 0, 1, 2
KINDS = {"gelu": GELU, "gelu_tanh": GELU_TANH, "silu": SILU}
_ELEMENTS_PER_PROGRAM = 1024


@triton.jit
def _gated_forward_kernel(gate_ptr, up_ptr, out_ptr, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    g = tl.load(gate_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if KIND == 0:  # exact GELU
        act = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    elif KIND == 1:  # tanh GELU; tanh(z) = 2 sigmoid(2z) - 1
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        act = 0.5 * g * (2.0 / (1.0 + tl.exp(-2.0 * inner)))
    else:  # SiLU
        act = g / (1.0 + tl.exp(-g))
    tl.store(out_ptr + offsets, (act * u).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _gated_backward_kernel(grad_ptr, gate_ptr, up_ptr, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """d(gate) written over gate, d(up) over up."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    d = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if KIND == 0:
        cdf = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476))
        act = g * cdf
        slope = cdf + g * 0.3989422804014327 * tl.exp(-0.5 * g * g)
    elif KIND == 1:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        t = 2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0
        act = 0.5 * g * (1.0 + t)
        slope = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * g * g)
    else:
        s = 1.0 / (1.0 + tl.exp(-g))
        act = g * s
        slope = s * (1.0 + g * (1.0 - s))
    tl.store(up_ptr + offsets, (d * act).to(up_ptr.dtype.element_ty), mask=inside)
    tl.store(gate_ptr + offsets, (d * u * slope).to(gate_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, seq, heads,
                 x_sb, x_sh, x_st, c_sb, c_st, o_sb, o_sh, o_st,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BACKWARD: tl.constexpr):
    """One (batch, position) per program, every head: x * cos + rotate_half(x) * sin, or its transpose."""
    row = tl.program_id(0).to(tl.int64)
    b, t = row // seq, row % seq
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, HALF)[None, :]
    inside = h < heads
    x_at = x_ptr + b * x_sb + t * x_st + h * x_sh + j
    x1 = tl.load(x_at, mask=inside, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + HALF, mask=inside, other=0.0).to(tl.float32)
    c_at = b * c_sb + t * c_st + tl.arange(0, HALF)[None, :]
    c1 = tl.load(cos_ptr + c_at).to(tl.float32)
    c2 = tl.load(cos_ptr + c_at + HALF).to(tl.float32)
    s1 = tl.load(sin_ptr + c_at).to(tl.float32)
    s2 = tl.load(sin_ptr + c_at + HALF).to(tl.float32)
    if BACKWARD:  # rotate_half's transpose: (v1, v2) -> (v2, -v1)
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:  # rotate_half: (x1, x2) -> (-x2, x1)
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    o_at = out_ptr + b * o_sb + t * o_st + h * o_sh + j
    tl.store(o_at, y1.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(o_at + HALF, y2.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _rmsnorm_forward_kernel(x_ptr, w_ptr, out_ptr, rstd_ptr, width, eps,
                            GEMMA: tl.constexpr, BLOCK: tl.constexpr):
    """Gemma: (x * rstd * (1 + w)) rounded once. Llama/Mistral: w * (x * rstd rounded to x's dtype)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
    normed = x * rstd
    if GEMMA:
        y = normed * (1.0 + w)
    else:
        y = normed.to(x_ptr.dtype.element_ty).to(tl.float32) * w
    tl.store(out_ptr + row * width + cols, y.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rmsnorm_backward_kernel(grad_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, width,
                             GEMMA: tl.constexpr, BLOCK: tl.constexpr):
    """dx = rstd * (g - normed * mean(g * normed)), g = grad * scale (the weight is frozen)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    d = tl.load(grad_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row)
    scale = (1.0 + w) if GEMMA else w
    g = d * scale
    normed = x * rstd
    dx = rstd * (g - normed * (tl.sum(g * normed, axis=0) / width))
    tl.store(dx_ptr + row * width + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _run(kernel, grid, *args, **meta):
    """Every launch goes through here: the tests count launches per kernel, so a silent fallback fails."""
    kernel[grid](*args, **meta)


def _elementwise_grid(n: int):
    return (triton.cdiv(n, _ELEMENTS_PER_PROGRAM),)


class GatedActivation(torch.autograd.Function):
    """act(gate) * up keeping gate and up only; backward writes d(gate), d(up) over them (runs once)."""

    @staticmethod
    def forward(ctx, gate, up, kind: str):
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty_like(gate)
        _run(_gated_forward_kernel, _elementwise_grid(gate.numel()), gate, up, out, gate.numel(),
             KIND=KINDS[kind], BLOCK=_ELEMENTS_PER_PROGRAM)
        ctx.save_for_backward(gate, up)
        ctx.kind, ctx.done = kind, False
        return out

    @staticmethod
    def backward(ctx, grad_out):
        backward_once(ctx, "triton_mlp")
        gate, up = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        _run(_gated_backward_kernel, _elementwise_grid(gate.numel()), grad_out, gate, up, gate.numel(),
             KIND=KINDS[ctx.kind], BLOCK=_ELEMENTS_PER_PROGRAM)
        return gate, up, None


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim), last dim contiguous; cos/sin: (batch or 1, seq, head_dim)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, heads, seq, dim = x.shape
    out = torch.empty((batch, seq, heads, dim), dtype=x.dtype, device=x.device).transpose(1, 2)
    c_sb = 0 if cos.shape[0] == 1 else cos.stride(0)
    _run(_rope_kernel, (batch * seq,), x, cos, sin, out, seq, heads,
         x.stride(0), x.stride(1), x.stride(2), c_sb, cos.stride(1), out.stride(0), out.stride(1), out.stride(2),
         HALF=dim // 2, BLOCK_H=triton.next_power_of_2(heads), BACKWARD=backward)
    return out


class Rope(torch.autograd.Function):
    """transformers' `q * cos + rotate_half(q) * sin` for one of q, k (cos and sin carry no gradient)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad_out):
        cos, sin = ctx.saved_tensors
        return _rope(grad_out, cos, sin, backward=True), None, None


def rope_supported(x: torch.Tensor, cos: torch.Tensor) -> bool:
    dim = x.shape[-1]
    return (x.dim() == 4 and cos.dim() == 3 and cos.shape[-1] == dim and cos.shape[1] == x.shape[2]
            and cos.shape[0] in (1, x.shape[0]) and dim % 2 == 0 and triton.next_power_of_2(dim // 2) == dim // 2
            and cos.stride(-1) == 1 and cos.device == x.device)


class RMSNorm(torch.autograd.Function):
    """Gemma's or Llama/Mistral's RMSNorm over the last dimension, with a frozen weight."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, gemma: bool):
        width = x.shape[-1]
        rows = x.reshape(-1, width).contiguous()
        out_dtype = x.dtype if gemma else torch.promote_types(weight.dtype, x.dtype)
        out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(width)
        _run(_rmsnorm_forward_kernel, (rows.shape[0],), rows, weight, out, rstd, width, eps,
             GEMMA=gemma, BLOCK=block)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.gemma, ctx.block, ctx.shape = gemma, block, x.shape
        return out.view(*x.shape[:-1], width)

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight, rstd = ctx.saved_tensors
        width = rows.shape[-1]
        grad = grad_out.reshape(-1, width).contiguous()
        dx = torch.empty_like(rows)
        _run(_rmsnorm_backward_kernel, (rows.shape[0],), grad, rows, weight, rstd, dx, width,
             GEMMA=ctx.gemma, BLOCK=ctx.block)
        return dx.view(ctx.shape), None, None, None
