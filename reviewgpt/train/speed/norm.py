"""RMSNorm through torch's fused kernel (Mistral / Llama).

transformers 4.38.2's `MistralRMSNorm` is five element-wise passes in fp32 over the T x hidden
activations (upcast, square, mean, scale, downcast) plus the weight multiply, and autograd keeps
an fp32 copy of the input for backward; there are two per layer, run twice with gradient
checkpointing. `torch.nn.functional.rms_norm` (torch >= 2.4; a single fused CUDA kernel with a
fused backward in recent torch) computes the same `x * rsqrt(mean(x^2) + eps)` with fp32
accumulation and keeps only the per-row reciprocal. The weight is applied inside the kernel when
it has the input's dtype (bf16 after `bf16_frozen_weights`); otherwise afterwards, with the same
dtype promotion as the original. Gemma's norm (`1 + weight`, see reviewgpt.train.speed.precision) is
left alone. On a torch without `rms_norm` nothing is patched.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from reviewgpt.train.speed.patching import patch_forward, unpatch_forward

log = logging.getLogger(__name__)
_RMSNORM_TYPES = ("MistralRMSNorm", "LlamaRMSNorm")


def _fused_rmsnorm_forward(self, hidden_states):
    shape = (hidden_states.shape[-1],)
    if self.weight.dtype == hidden_states.dtype:
        return F.rms_norm(hidden_states, shape, self.weight, self.variance_epsilon)
    return self.weight * F.rms_norm(hidden_states, shape, None, self.variance_epsilon)


def patch_fused_rmsnorm(model) -> int:
    """Instance-level patch of Mistral/Llama RMSNorm modules; returns how many were patched."""
    if not hasattr(F, "rms_norm"):
        log.info("torch %s has no rms_norm (torch >= 2.4): fused_rmsnorm stays off", torch.__version__)
        return 0
    norms = (m for m in model.modules() if type(m).__name__ in _RMSNORM_TYPES and hasattr(m, "variance_epsilon"))
    return patch_forward(norms, _fused_rmsnorm_forward)


def unpatch_fused_rmsnorm(model) -> None:
    unpatch_forward(model, _fused_rmsnorm_forward)

