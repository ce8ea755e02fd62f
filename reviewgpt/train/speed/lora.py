"""A fused LoRA forward: the adapter's up-projection, scaling and residual add in one GEMM.

peft 0.9.0's LoRA layers compute, per adapted projection,

    result = base(x).clone()                      # Linear4bit only: a defensive copy
    result = result + lora_B(lora_A(dropout(x))) * scaling

which is three element-wise passes over the T x out result (clone, scale, add), plus one more in
backward (the scale), for each of q, k, v, o in every layer, twice with gradient checkpointing.
`torch.addmm(result, h, B.T, alpha=scaling)` does the scale and the add inside the up-projection
GEMM's epilogue, out of place (so the defensive copy is not needed either). The dropout is the same
module, called in the same order, so its random masks are the ones peft would draw; the math is
the same, and the rounding is at most one bf16 step different (the sum is rounded once instead of
twice).

The fused path is taken for the common training case only: one active adapter, not merged, no
DoRA, and either autocast on or the adapter in the base output's dtype. Anything else (merged
weights, several adapters, fp32 adapters without autocast) runs peft's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reviewgpt.train.speed.loss import autocast_dtype
from reviewgpt.train.speed.patching import patch_forward, unpatch_forward

_LORA_LINEAR_TYPES = ("Linear", "Linear4bit", "Linear8bitLt")


def _single_adapter(layer):
    if layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or getattr(layer, "use_dora", {}).get(active[0], False):
        return None
    return active[0]


def _fused_lora_forward(self, x, *args, **kwargs):
    adapter = None if (args or kwargs) else _single_adapter(self)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    # The base layers (nn.Linear, bitsandbytes') return x's dtype; without autocast an adapter in
    # another dtype is rounded differently by peft: keep its path (decided before any work is done).
    if autocast_dtype(x.device.type) is None and lora_A.dtype != x.dtype:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    down = F.linear(self.lora_dropout[adapter](x), lora_A)  # ... x r
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), lora_B.t(),
                        alpha=self.scaling[adapter])
    return fused.view(result.shape)


def patch_fused_lora(model) -> int:
    """Instance-level patch of every peft LoRA linear layer; returns how many were patched."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    layers = (m for m in model.modules() if isinstance(m, LoraLayer) and type(m).__name__ in _LORA_LINEAR_TYPES)
    return patch_forward(layers, _fused_lora_forward)


def unpatch_fused_lora(model) -> None:
    unpatch_forward(model, _fused_lora_forward)
