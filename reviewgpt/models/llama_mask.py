"""Llama (SmolLM2) attention masks the size of the batch, not of the model's context.

transformers 4.38.2 `LlamaModel._update_causal_mask` builds, on every forward, a float mask of
batch x max_position_embeddings x max_position_embeddings (8192 x 8192 for SmolLM2: 128 MiB per
sequence in bf16, rebuilt for each generated token) and `LlamaSdpaAttention` slices it per layer
and passes it to `scaled_dot_product_attention`, so SDPA never takes its flash kernel.

`patch_llama_causal_mask` replaces both, per model instance, for `attn_implementation="sdpa"`:
- no padding and no cache (training, one eval sequence): no mask, SDPA with `is_causal=True`;
- no padding, one new token (greedy decoding of unpadded prompts): no mask at all;
- otherwise a mask of batch x new tokens x all tokens with the same values as 4.38.2's rows
  (causal + padding; rows that would be fully masked by left padding are opened, as 4.38.2 does
  for SDPA's memory-efficient kernel).
Logits, gradients and greedy generations equal the unpatched model's (tests/test_llama_mask.py).
"""

from __future__ import annotations

import types

import torch


def compact_causal_mask(attention_mask: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, query_length, keys) additive mask for the last `query_length` positions of a
    2-D padding mask (1 = token, 0 = padding) that covers every key."""
    batch, keys = attention_mask.shape
    device = attention_mask.device
    rows = torch.arange(keys - query_length, keys, device=device)[:, None]
    allowed = (torch.arange(keys, device=device)[None, :] <= rows)[None] & attention_mask[:, None, :].bool()
    min_value = torch.finfo(dtype).min
    mask = torch.zeros((batch, query_length, keys), dtype=dtype, device=device).masked_fill(~allowed, min_value)
    # A row of padding sees nothing; SDPA's memory-efficient kernel returns NaN there (pytorch#110213).
    fully_masked = ~allowed.any(dim=-1, keepdim=True)
    return mask.masked_fill(fully_masked, 0.0)[:, None]


def _update_causal_mask(self, attention_mask, input_tensor):
    query_length = input_tensor.shape[1]
    if attention_mask is None or attention_mask.dim() != 2:
        if attention_mask is None and not self.training and query_length == 1:
            return None
        if attention_mask is None and self.training:
            return None  # training never has a cache: causal attention over the whole sequence
        return type(self)._update_causal_mask(self, attention_mask, input_tensor)
    no_padding = bool(torch.all(attention_mask == 1))
    keys = attention_mask.shape[1]
    if no_padding and (query_length == 1 or query_length == keys):
        return None
    return compact_causal_mask(attention_mask, query_length, input_tensor.dtype)


def _sdpa_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                  output_attentions=False, use_cache=False, cache_position=None, **kwargs):
    """LlamaSdpaAttention.forward (4.38.2) for the masks above: a compact mask is used as it is,
    no mask means causal over the new tokens (is_causal) or, for one new token, over everything."""
    if output_attentions or (attention_mask is not None and attention_mask.shape[-2] != hidden_states.shape[1]):
        return type(self).forward(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                  past_key_value=past_key_value, output_attentions=output_attentions,
                                  use_cache=use_cache, cache_position=cache_position, **kwargs)
    # Looked up at call time: triton_rope swaps the module's apply_rotary_pos_emb while it runs.
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    query, key, value = project_qkv(self, hidden_states)
    cos, sin = self.rotary_emb(value, position_ids)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    past_key_value = getattr(self, "past_key_value", past_key_value)
    if past_key_value is not None:
        key, value = past_key_value.update(key, value, self.layer_idx,
                                           {"sin": sin, "cos": cos, "cache_position": cache_position})
    is_causal = attention_mask is None and query.shape[-2] > 1 and key.shape[-2] == query.shape[-2]
    return attend(self, query, key, value, attention_mask, is_causal), None, past_key_value


def project_qkv(attention, hidden_states):
    """q, k, v of a Llama-style attention module (4.38.2), as (batch, heads, tokens, head_dim)."""
    bsz, q_len, _ = hidden_states.size()

    def heads(proj, count):
        return proj(hidden_states).view(bsz, q_len, count, attention.head_dim).transpose(1, 2)

    return (heads(attention.q_proj, attention.num_heads), heads(attention.k_proj, attention.num_key_value_heads),
            heads(attention.v_proj, attention.num_key_value_heads))


def attend(attention, query, key, value, attention_mask, is_causal: bool):
    """SDPA over rotated q, k, v (grouped k/v heads repeated, as 4.38.2 does), then o_proj."""
    from transformers.models.llama.modeling_llama import repeat_kv  # Gemma's and Mistral's are copies

    key = repeat_kv(key, attention.num_key_value_groups)
    value = repeat_kv(value, attention.num_key_value_groups)
    if query.device.type == "cuda" and attention_mask is not None:
        # SDPA's memory-efficient kernel with a custom mask needs contiguous inputs (pytorch#112577).
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask,
        dropout_p=attention.attention_dropout if attention.training else 0.0, is_causal=is_causal)
    bsz, _, q_len, _ = query.shape
    # -1, not hidden_size: Gemma's heads x head_dim is not its hidden size (gemma-7b: 16 x 256 vs 3072).
    return attention.o_proj(out.transpose(1, 2).contiguous().view(bsz, q_len, -1))


def patch_causal_sdpa(model, stack: str, attention: str, update_causal_mask, sdpa_forward) -> bool:
    """Instance-level patches of a decoder stack's causal mask and its SDPA attention modules (class
    names `stack`, `attention`) for a model loaded with attn_implementation='sdpa'; Gemma's
    (train.speed.attention) and Llama's go through here. True when a stack was patched."""
    patched = False
    for module in model.modules():
        name = type(module).__name__
        if name == stack and module.config._attn_implementation == "sdpa":
            module._update_causal_mask = types.MethodType(update_causal_mask, module)
            patched = True
        elif name == attention:
            module.forward = types.MethodType(sdpa_forward, module)
    return patched


def unpatch_causal_sdpa(model, stack: str, attention: str) -> None:
    """Undo `patch_causal_sdpa`: the classes' own methods are back."""
    for module in model.modules():
        if type(module).__name__ in (stack, attention):
            for attr in ("_update_causal_mask", "forward"):
                if attr in vars(module):
                    delattr(module, attr)


def patch_llama_causal_mask(model) -> bool:
    return patch_causal_sdpa(model, "LlamaModel", "LlamaSdpaAttention", _update_causal_mask, _sdpa_forward)


def unpatch_llama_causal_mask(model) -> None:
    unpatch_causal_sdpa(model, "LlamaModel", "LlamaSdpaAttention")
