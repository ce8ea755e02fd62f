"""The Triton kernels (reviewgpt.train.speed.triton_kernels) against transformers 4.38.2's own ops at
gemma-7b's 8K shapes (or `--seq`/`--family mistral`): largest difference forward and backward, and
the median time of forward + backward of each (triton.testing.do_bench, CUDA events).

    python bench/triton_kernels.py [--family gemma|mistral] [--seq 8192] [--output rows.jsonl]

Needs a CUDA GPU and triton >= 3.0. Prints one line per op; `--output` appends them as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # hidden, intermediate, heads, kv heads, head dim, activation
    "gemma": (3072, 24576, 16, 16, 256, "gelu"),
    "mistral": (4096, 14336, 32, 8, 128, "silu"),
}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def cases(family: str, seq: int):
    from reviewgpt.train.speed import triton_kernels as tk

    hidden, inter, heads, kv_heads, head_dim, act = SHAPES[family]
    dev, bf16 = "cuda", torch.bfloat16
    gate, up = (torch.randn(1, seq, inter, device=dev, dtype=bf16) for _ in range(2))
    activation = F.silu if act == "silu" else F.gelu
    yield ("gated_mlp", (gate, up), lambda g, u: activation(g) * u,
           lambda g, u: tk.GatedActivation.apply(g * 1, u * 1, act))  # * 1: the kernel writes its grads over them
    q = torch.randn(1, seq, heads, head_dim, device=dev, dtype=bf16).transpose(1, 2)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=dev).float() / head_dim))
    freqs = torch.arange(seq, device=dev).float()[:, None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)[None]
    cos, sin = emb.cos().to(bf16), emb.sin().to(bf16)
    yield ("rope_q", (q,), lambda x: x * cos[:, None] + _rotate_half(x) * sin[:, None],
           lambda x: tk.Rope.apply(x, cos, sin))
    x = torch.randn(1, seq, hidden, device=dev, dtype=bf16)
    w = (torch.randn(hidden, device=dev) * 0.1).to(bf16)
    gemma = family == "gemma"

    def norm(t):
        f = t.float()
        normed = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (normed * (1.0 + w.float())).type_as(t) if gemma else w * normed.to(t.dtype)

    yield ("rmsnorm", (x,), norm, lambda t: tk.RMSNorm.apply(t, w, 1e-6, gemma))


def compare(name, inputs, reference, fused, timer) -> dict:
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    want = reference(*leaves)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad)
    got = fused(*leaves)
    got_grads = torch.autograd.grad(got, leaves, grad)

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()

    def step(fn):
        return lambda: torch.autograd.grad(fn(*leaves), leaves, grad)

    return {"op": name, "shape": list(inputs[0].shape), "forward_rel_diff": rel(got, want),
            "backward_rel_diff": max(rel(a, b) for a, b in zip(got_grads, want_grads)),
            "torch_ms": round(timer(step(reference)), 3), "triton_ms": round(timer(step(fused)), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(SHAPES), default="gemma")
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/triton_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 1
    from triton.testing import do_bench

    def timer(fn):
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    for case in cases(args.family, args.seq):
        row = {"family": args.family, "seq": args.seq, **compare(*case, timer), "gpu": torch.cuda.get_device_name(0)}
        print(json.dumps(row), flush=True)
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
