"""`triton_mlp`, `triton_rope`, `triton_rmsnorm`: the Triton kernels of reviewgpt.train.speed.triton_kernels
patched into a model (each an entry of reviewgpt.train.speed.PATCHES).

    triton_mlp      the gated MLP's act(gate) * up (GeGLU exact or tanh, SwiGLU): one pass forward,
                    one backward; keeps gate and up only and writes its gradients over them (the
                    memory of `lean_mlp`, without its chunked recomputation), so it replaces lean_mlp
    triton_rope     the modules' `apply_rotary_pos_emb` (Gemma, Mistral, Llama): one pass per tensor
    triton_rmsnorm  Gemma's RMSNorm (`1 + weight`, rounded once as transformers >= 4.40 does) and
                    Mistral's/Llama's (rounded before the weight, as 4.38.2 does), frozen weight only

Each is off, with one log line, where it cannot run: triton missing or older than 3.0 (torch 2.2's
triton 2.2, torch 1.13 has none), or the model not on a CUDA GPU (set TRITON_INTERPRET=1 before
importing triton to run them on CPU in triton's interpreter, as the tests do). Where a call does not
fit a kernel (a weight that trains, a head size whose half is not a power of two, retain_graph)
the module's own code runs.

RoPE is a function of the modeling modules, not a module: it is swapped in those Python modules for
the duration of `speedups` (like the SDPA backend order) and put back after; the patched attention
forwards of reviewgpt.models.llama_mask and train.speed.attention look it up at call time, so they take it too.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from reviewgpt import torch_support
from reviewgpt.train.speed.mlp import gated_mlps
from reviewgpt.train.speed.patching import patch_forward, unpatch_forward

log = logging.getLogger(__name__)
_ROPE_MODULES = ("transformers.models.gemma.modeling_gemma", "transformers.models.mistral.modeling_mistral",
                 "transformers.models.llama.modeling_llama")
_GEMMA_NORMS, _LLAMA_NORMS = ("GemmaRMSNorm",), ("MistralRMSNorm", "LlamaRMSNorm")


def triton_problem(model) -> str:
    """Why the Triton kernels cannot run for `model` ('' when they can)."""
    problem = torch_support.triton_problem()
    if problem:
        return problem
    device = next(model.parameters()).device
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the model is on {device.type}, not a CUDA GPU"
    return ""


def _ops():
    from reviewgpt.train.speed import triton_kernels

    return triton_kernels


def _triton_mlp_forward(self, x):
    if getattr(self.config, "pretraining_tp", 1) > 1:
        return type(self).forward(self, x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    if gate.shape != up.shape or gate.dtype != up.dtype:
        return self.down_proj(self.act_fn(gate) * up)
    return self.down_proj(_ops().GatedActivation.apply(gate, up, self._reviewgpt_activation))


def patch_triton_mlp(model) -> int:
    """Instance-level patch of the gated MLPs with a supported activation; returns how many."""
    return patch_forward(gated_mlps(model), _triton_mlp_forward)


def unpatch_triton_mlp(model) -> None:
    unpatch_forward(model, _triton_mlp_forward, ("_reviewgpt_activation",))


def _triton_rmsnorm_forward(self, x):
    if self.weight.requires_grad and torch.is_grad_enabled():  # a trained weight: the forward patched before
        prior = self._reviewgpt_prior_forward  # (Gemma's round-once, fused_rmsnorm) or the class's
        return prior(x) if prior is not None else type(self).forward(self, x)
    gemma = type(self).__name__ in _GEMMA_NORMS
    eps = self.eps if gemma else self.variance_epsilon
    return _ops().RMSNorm.apply(x, self.weight, eps, gemma)


def patch_triton_rmsnorm(model) -> int:
    """Instance-level patch of Gemma/Mistral/Llama RMSNorm modules; returns how many."""
    norms = [m for m in model.modules() if type(m).__name__ in _GEMMA_NORMS + _LLAMA_NORMS]
    for norm in norms:
        norm._reviewgpt_prior_forward = vars(norm).get("forward")
    return patch_forward(norms, _triton_rmsnorm_forward)


def unpatch_triton_rmsnorm(model) -> None:
    unpatch_forward(model, _triton_rmsnorm_forward, ("_reviewgpt_prior_forward",))


def _fused_rope(original):
    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        ops = _ops()
        full_cos, full_sin = cos, sin
        if cos.dim() == 2 and position_ids is not None:  # Mistral 4.38.2: caches indexed by position
            full_cos, full_sin = cos[position_ids], sin[position_ids]
        if (unsqueeze_dim != 1 or full_cos.dtype != q.dtype or full_sin.shape != full_cos.shape
                or full_sin.stride() != full_cos.stride()  # the kernel reads both with cos's strides
                or not (ops.rope_supported(q, full_cos) and ops.rope_supported(k, full_cos))):
            return original(q, k, cos, sin, position_ids, unsqueeze_dim)
        return ops.Rope.apply(q, full_cos, full_sin), ops.Rope.apply(k, full_cos, full_sin)

    apply_rotary_pos_emb.reviewgpt_original = original
    return apply_rotary_pos_emb


def patch_triton_rope(model) -> bool:
    """Swap `apply_rotary_pos_emb` in the modeling modules of `model`'s layers; True when any was."""
    names = {type(m).__module__ for m in model.modules()} & set(_ROPE_MODULES)
    for name in names:
        module = sys.modules[name]
        if not hasattr(module.apply_rotary_pos_emb, "reviewgpt_original"):
            module.apply_rotary_pos_emb = _fused_rope(module.apply_rotary_pos_emb)
    return bool(names)


def unpatch_triton_rope() -> None:
    """Put every swapped `apply_rotary_pos_emb` back (each swap carries its original)."""
    for name in _ROPE_MODULES:
        module = sys.modules.get(name)
        original = getattr(getattr(module, "apply_rotary_pos_emb", None), "reviewgpt_original", None)
        if original is not None:
            module.apply_rotary_pos_emb = original
