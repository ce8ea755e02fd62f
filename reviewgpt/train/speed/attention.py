"""Let attention take its fast kernels on the pinned stack.

transformers 4.38.2 `GemmaModel._update_causal_mask` always builds a 4-D float mask (from a
max_position x max_position buffer, doubled past 8192) and `GemmaSdpaAttention` passes it to
`scaled_dot_product_attention`, so SDPA never takes its flash kernel and computes the masked
upper triangle too. When a training batch has no padding, the mask says nothing that
`is_causal=True` does not: these patches drop it and call SDPA with `is_causal=True`. With padding
(or in eval/generation) the original code runs. Mistral's SDPA path already does this.

flash-attn 2 is used when installed (`attn_implementation: auto`, see reviewgpt.models).
`prefer_cudnn_attention` puts cuDNN's fused attention first in SDPA's backend order where torch
has that switch (torch >= 2.5; a no-op before).
"""

from __future__ import annotations

import logging

import torch

from reviewgpt.models.llama_mask import attend, patch_causal_sdpa, project_qkv, unpatch_causal_sdpa

log = logging.getLogger(__name__)


def _no_padding(attention_mask) -> bool:
    return attention_mask is None or (attention_mask.dim() == 2 and bool(torch.all(attention_mask == 1)))


def _gemma_update_causal_mask(self, attention_mask, input_tensor):
    if self.training and self.config._attn_implementation == "sdpa" and _no_padding(attention_mask):
        return None  # GemmaSdpaAttention below then uses is_causal=True
    return type(self)._update_causal_mask(self, attention_mask, input_tensor)


def _gemma_sdpa_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                        output_attentions=False, use_cache=False, cache_position=None, **kwargs):
    """GemmaSdpaAttention.forward (4.38.2) with `is_causal=True` when no mask was built."""
    if attention_mask is not None or output_attentions or past_key_value is not None:
        return type(self).forward(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                  past_key_value=past_key_value, output_attentions=output_attentions,
                                  use_cache=use_cache, cache_position=cache_position, **kwargs)
    # Looked up at call time: triton_rope swaps the module's apply_rotary_pos_emb while it runs.
    from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

    query, key, value = project_qkv(self, hidden_states)
    cos, sin = self.rotary_emb(value, position_ids, seq_len=None)
    query, key = apply_rotary_pos_emb(query, key, cos, sin, None)
    return attend(self, query, key, value, None, is_causal=query.shape[-2] > 1), None, past_key_value


def patch_gemma_causal_sdpa(model) -> bool:
    """Instance-level patches on a Gemma model loaded with attn_implementation='sdpa'."""
    return patch_causal_sdpa(model, "GemmaModel", "GemmaSdpaAttention", _gemma_update_causal_mask,
                             _gemma_sdpa_forward)


def unpatch_gemma_causal_sdpa(model) -> None:
    unpatch_causal_sdpa(model, "GemmaModel", "GemmaSdpaAttention")


def _sdp_order_switch():
    getter = getattr(torch._C, "_get_sdp_priority_order", None)
    setter = getattr(torch._C, "_set_sdp_priority_order", None)
    backend = getattr(getattr(torch.nn, "attention", None), "SDPBackend", None)
    if getter is None or setter is None or not hasattr(backend, "CUDNN_ATTENTION"):
        return None
    return getter, setter, backend


def sdpa_order():
    """SDPA's process-wide backend order now (None on a torch without the switch)."""
    switch = _sdp_order_switch()
    return list(switch[0]()) if switch else None


def set_sdpa_order(order) -> None:
    """Put back an order `sdpa_order` returned (None: nothing to do)."""
    switch = _sdp_order_switch()
    if switch and order is not None:
        switch[1](list(order))


def prefer_cudnn_attention():
    """Put cuDNN attention first in SDPA's backend order; returns the order before it (for
    `set_sdpa_order`), or None when this torch has no such switch. Process-wide: the `sdpa_cudnn`
    entry of reviewgpt.train.speed puts the order back when the run ends."""
    switch = _sdp_order_switch()
    if switch is None:
        log.info("torch %s cannot reorder SDPA backends; keeping its default", torch.__version__)
        return None
    getter, setter, backend = switch
    before = list(getter())
    cudnn = backend.CUDNN_ATTENTION.value
    setter([cudnn] + [b for b in before if b != cudnn])
    return before
