"""Keep frozen weights and the residual stream in bf16 after peft's k-bit preparation.

peft 0.9.0's `prepare_model_for_kbit_training` (called by trl 0.7.11 for 4-bit models) casts every
bf16 parameter that is not quantized to fp32: the norms and, for Gemma, the 256000 x 3072
embedding (3 GiB in fp32; it is also the tied LM head). The embedding then emits fp32 hidden
states, so the residual stream between layers, and every checkpointed activation, is fp32 (twice
the memory, slower element-wise work). All of these parameters are frozen, so their fp32 copies
buy nothing for the optimizer; the LoRA weights (trainable) stay fp32.

Gemma's RMSNorm in 4.38.2 computes `normed.type_as(x) * (1 + weight)`: with a bf16 weight the
`1 + weight` would round in bf16. The replacement does it in fp32 and rounds once at the end, as
transformers >= 4.40 does.
"""

from __future__ import annotations

import torch

from reviewgpt.train.speed.patching import patch_forward, unpatch_forward


def _gemma_rmsnorm_forward(self, x):
    output = self._norm(x.float()) * (1.0 + self.weight.float())
    return output.type_as(x)


def keep_frozen_weights_in(model, dtype=torch.bfloat16) -> int:
    """Cast frozen fp32 floating-point parameters back to `dtype`; returns the number of elements cast."""
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and param.is_floating_point():
            param.data = param.data.to(dtype)
            cast += param.numel()
    if dtype != torch.float32:
        patch_forward((m for m in model.modules() if type(m).__name__ == "GemmaRMSNorm"), _gemma_rmsnorm_forward)
    return cast


def unpatch_gemma_rmsnorm(model) -> None:
    """Give Gemma's RMSNorm modules their own forward back (the bf16 cast itself stays: it loses nothing)."""
    unpatch_forward(model, _gemma_rmsnorm_forward)


def float_parameter_bytes(model) -> dict:
    """{dtype name: bytes} of the model's floating-point parameters (for reports and tests)."""
    out: dict = {}
    for param in model.parameters():
        if param.is_floating_point():
            key = str(param.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + param.numel() * param.element_size()
    return out
