"""What the fast generation engine (reviewgpt.eval.engine) needs of a loaded model: whether it can run
it, its decoder's parts, a run folder's adapter merged in memory, and how many papers fit at once.

The engine runs the model's own modules (embedding, norms, projections, MLPs, LM head) and replaces
only the attention and the cache, so it supports what it knows the layer layout of: the Gemma,
Mistral and Llama decoder layers of transformers 4.38.2. Anything else (another architecture, Llama's
tensor-parallel `pretraining_tp`, a model spread over devices) is named by `unsupported_reason`, and
`review` then generates with transformers' own `generate`.

A run folder's LoRA adapter is merged into the weights in memory by default (`merge_adapter_in_memory`):
decoding then runs plain 16-bit linear layers instead of a base layer plus two LoRA products per
projection. A 4-bit NF4 base is first dequantized exactly as bitsandbytes dequantizes it for its own
matrix products, so the merged weight is W_nf4 + s*B@A, computed in fp32 and rounded once to bf16:
what `reviewgpt merge --base-weights nf4` writes. Versus the run on its 4-bit base this changes each
weight by at most one bf16 rounding (relative 2^-9) and uses 2 bytes per weight instead of about 0.5;
`--keep-adapter` keeps the 4-bit base and the adapter as loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

DECODER_CLASSES = {"gemma": "GemmaDecoderLayer", "mistral": "MistralDecoderLayer", "llama": "LlamaDecoderLayer"}


def causal_lm_of(model):
    """The transformers causal LM inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> Optional[str]:
    """Why the engine cannot run `model` (one phrase), or None when it can."""
    import torch

    from reviewgpt import torch_support

    if not torch_support.has("sdpa"):  # the cu117 image's torch 1.13 has no scaled_dot_product_attention
        return f"torch {torch_support.installed_torch_version()} has no scaled_dot_product_attention (torch >= 2.1.1)"

    lm = causal_lm_of(model)
    config = lm.config
    family = getattr(config, "model_type", None)
    if family not in DECODER_CLASSES:
        return f"model type {family!r} is not one the engine knows ({', '.join(DECODER_CLASSES)})"
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not layers or any(type(layer).__name__ != DECODER_CLASSES[family] for layer in layers):
        return f"the decoder layers are not transformers' {DECODER_CLASSES[family]}"
    if getattr(config, "pretraining_tp", 1) > 1:
        return "Llama's pretraining_tp > 1 splits its projections"
    devices = {p.device for p in lm.parameters()}
    if len(devices) > 1:
        return f"the model is spread over {len(devices)} devices"
    if lm.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"weights in {lm.dtype}"
    if any(getattr(m, "use_dora", {}) and any(m.use_dora.values()) for m in model.modules()):
        return "a DoRA adapter"
    return None


@dataclass
class DecoderParts:
    """The modules one decoding step runs, and the facts of the attention that the engine replaces."""

    family: str
    embed: object
    layers: list
    norm: object
    head: object
    embed_scale: Optional[float]  # Gemma multiplies the embeddings by sqrt(hidden size)
    heads: int
    kv_heads: int
    head_dim: int
    window: Optional[int]  # keys a query sees (itself included); None: the whole context
    vocab: int
    dtype: object
    device: object


def decoder_parts(model) -> DecoderParts:
    lm = causal_lm_of(model)
    config = lm.config
    family = config.model_type
    attention = lm.model.layers[0].self_attn
    # transformers 4.38.2's SDPA path of Mistral ignores the sliding window (it builds a plain causal
    # mask); the eager and flash-attention paths honour it. The engine does what the loaded model does.
    window = getattr(config, "sliding_window", None) if config._attn_implementation != "sdpa" else None
    embed = lm.get_input_embeddings()
    return DecoderParts(
        family=family, embed=embed, layers=list(lm.model.layers), norm=lm.model.norm,
        head=lm.get_output_embeddings(), embed_scale=config.hidden_size ** 0.5 if family == "gemma" else None,
        heads=attention.num_heads, kv_heads=attention.num_key_value_heads, head_dim=attention.head_dim,
        window=window, vocab=lm.get_output_embeddings().weight.shape[0], dtype=embed.weight.dtype,
        device=embed.weight.device)


def _dequantized(linear):
    """The 16-bit weight a bitsandbytes 4-bit layer multiplies by (its own dequantization), else the weight."""
    weight = linear.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return weight.data, weight.dtype
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, state), state.dtype


def _plain_linear(weight, bias, dtype):
    import torch

    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=dtype)
    linear.weight.data.copy_(weight)
    if bias is not None:
        linear.bias.data.copy_(bias.to(dtype))
    return linear.requires_grad_(False)


def merge_adapter_in_memory(model):
    """A run's model with every LoRA delta merged into its linear weights and every 4-bit linear layer
    dequantized (module docstring): a plain causal LM. Returns (model, merged LoRA layers, dequantized).
    Layers are replaced one at a time, so memory holds one 16-bit copy of the model, not two."""
    import torch

    lm = causal_lm_of(model)
    lora_layers = [name for name, m in lm.named_modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    quantized = [name for name, m in lm.named_modules() if getattr(getattr(m, "weight", None), "quant_state", None)
                 is not None and not any(name.startswith(lora + ".") for lora in lora_layers)]
    merged = dequantized = 0
    for name in lora_layers + quantized:
        module = lm.get_submodule(name)
        base = getattr(module, "base_layer", module)
        weight, dtype = _dequantized(base)
        dequantized += getattr(base.weight, "quant_state", None) is not None
        if base is not module:
            weight = weight.float()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()
                    weight = weight + delta.to(weight.device) * module.scaling[adapter]
            merged += 1
        parent, _, child = name.rpartition(".")
        setattr(lm.get_submodule(parent) if parent else lm, child, _plain_linear(weight, base.bias, dtype))
        del module, base, weight
    if dequantized and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the 4-bit blocks just freed: before the engine sizes its cache from free memory
    return lm.eval(), merged, dequantized


def kv_bytes_per_token(parts: DecoderParts) -> int:
    """Bytes of KV cache one token takes: layers x (key + value) x kv heads x head size x dtype size."""
    return len(parts.layers) * 2 * parts.kv_heads * parts.head_dim * parts.embed.weight.element_size()


def activation_bytes_per_token(model) -> int:
    """A generous bound of what one prefill token holds while a layer runs (hidden states, q/k/v, the
    MLP's three intermediate tensors), in the model's dtype: sizes the prefill's share of memory."""
    config = causal_lm_of(model).config
    size = causal_lm_of(model).get_input_embeddings().weight.element_size()
    heads_width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size
                                                       // config.num_attention_heads)
    return size * (6 * config.hidden_size + 3 * heads_width + 4 * config.intermediate_size)


def slots_for_memory(free_bytes: int, per_slot_bytes: int, reserve_bytes: int, wanted: int,
                     headroom: float = 0.9) -> int:
    """How many papers' KV caches fit in `headroom` of `free_bytes` after `reserve_bytes` (at most
    `wanted`); 0 when not even one does."""
    usable = int(free_bytes * headroom) - reserve_bytes
    return max(0, min(wanted, usable // per_slot_bytes)) if per_slot_bytes > 0 else wanted
