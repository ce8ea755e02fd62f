"""`lean_mlp`: the gated MLP's activation and product as one autograd step that keeps less.

transformers 4.38.2's Gemma/Mistral/Llama MLP is `down_proj(act_fn(gate_proj(x)) * up_proj(x))`.
Autograd keeps `gate`, `act(gate)` and `up` (each sequence x intermediate) for backward, and the
backward of the product makes two more of that size before the first is freed: six such tensors
are alive at once, the largest part of a recomputed layer's working set at long context (gemma-7b
at 32K tokens: 32768 x 24576 bf16 = 1.5 GiB each).

`GatedActivation` computes `act(gate) * up` keeping only `gate` and `up`; its backward works
through the rows in chunks (recomputing `act(gate)` per chunk, one element-wise pass) and writes
d(up) over `up` and d(gate) over `gate`, which nothing else holds: three such tensors at most.
The math is the activation's own (`aten.gelu_backward` / `aten.silu_backward`), so loss and
gradients equal the unpatched module's (tests/test_speed_long.py). Its backward runs once: a second
backward through the same graph (retain_graph) is refused.

Patched: MLP modules whose `act_fn` is GELU (exact or tanh) or SiLU, one tensor-parallel slice
(`pretraining_tp` 1). Anything else, and evaluation without grad, runs the original forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reviewgpt.train.speed.patching import patch_forward, unpatch_forward

_MLP_TYPES = ("GemmaMLP", "MistralMLP", "LlamaMLP")
# Rows per backward chunk are chosen so one chunk's temporaries are about this size.
CHUNK_BYTES = 256 << 20


def activation_kind(act_fn) -> str:
    """'gelu_tanh', 'gelu' or 'silu' for transformers' activation modules; '' for others."""
    name = type(act_fn).__name__
    if name == "PytorchGELUTanh":
        return "gelu_tanh"
    if name == "GELUActivation" and getattr(act_fn, "act", None) is F.gelu:
        return "gelu"
    if name == "SiLU":
        return "silu"
    return ""


def _activate(kind: str, gate: torch.Tensor) -> torch.Tensor:
    if kind == "silu":
        return F.silu(gate)
    return F.gelu(gate, approximate="tanh" if kind == "gelu_tanh" else "none")


def _activation_grad_into(kind: str, grad: torch.Tensor, gate: torch.Tensor) -> None:
    """gate <- d act(gate) / d gate * grad, written over `gate`."""
    if kind == "silu":
        torch.ops.aten.silu_backward.grad_input(grad, gate, grad_input=gate)
    else:
        torch.ops.aten.gelu_backward.grad_input(grad, gate, approximate="tanh" if kind == "gelu_tanh" else "none",
                                                grad_input=gate)


def backward_once(ctx, option: str) -> None:
    """Refuse a second backward through the same graph: the first wrote its gradients over the saved
    gate and up (lean_mlp's and triton_mlp's Functions)."""
    if ctx.done:
        raise RuntimeError(f"{option}: this graph's backward already ran (retain_graph is not supported); "
                           f"turn {option} off to backpropagate twice")
    ctx.done = True


class GatedActivation(torch.autograd.Function):
    """act(gate) * up, saving gate and up only; backward writes its gradients over them."""

    @staticmethod
    def forward(ctx, gate, up, kind: str):
        out = _activate(kind, gate)
        out.mul_(up)
        ctx.save_for_backward(gate, up)
        ctx.kind = kind
        ctx.done = False
        return out

    @staticmethod
    def backward(ctx, grad_out):
        backward_once(ctx, "lean_mlp")
        gate, up = ctx.saved_tensors
        width = gate.shape[-1]
        gate2d, up2d = gate.view(-1, width), up.view(-1, width)
        grad2d = grad_out.reshape(-1, width)
        rows = max(1, CHUNK_BYTES // (width * gate.element_size()))
        for start in range(0, gate2d.shape[0], rows):
            g, u, d = gate2d[start:start + rows], up2d[start:start + rows], grad2d[start:start + rows]
            activated = _activate(ctx.kind, g)
            grad_activated = d * u
            torch.mul(d, activated, out=u)  # d(up) = grad * act(gate), over up
            del activated
            _activation_grad_into(ctx.kind, grad_activated, g)  # d(gate), over gate
        return gate, up, None


def _lean_mlp_forward(self, x):
    kind = self._reviewgpt_activation
    if getattr(self.config, "pretraining_tp", 1) > 1:
        return type(self).forward(self, x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    lean = (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad) and gate.dtype == up.dtype
            and gate.shape == up.shape and gate.is_contiguous() and up.is_contiguous())
    if not lean:
        return self.down_proj(self.act_fn(gate) * up)
    return self.down_proj(GatedActivation.apply(gate, up, kind))


def gated_mlps(model) -> list:
    """The gated MLP modules of `model` whose activation is supported, each told its kind (lean_mlp's
    forward here and triton_mlp's in reviewgpt.train.speed.kernels read it)."""
    mlps = [m for m in model.modules()
            if type(m).__name__ in _MLP_TYPES and activation_kind(getattr(m, "act_fn", None))]
    for mlp in mlps:
        mlp._reviewgpt_activation = activation_kind(mlp.act_fn)
    return mlps


def patch_lean_mlp(model) -> int:
    """Instance-level patch of the gated MLPs with a supported activation; returns how many."""
    return patch_forward(gated_mlps(model), _lean_mlp_forward)


def unpatch_lean_mlp(model) -> None:
    unpatch_forward(model, _lean_mlp_forward, ("_reviewgpt_activation",))
