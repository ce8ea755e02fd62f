"""Causal-LM loss without full-sequence fp32 logits.

transformers 4.38.2's `GemmaForCausalLM.forward` / `MistralForCausalLM.forward` compute the logits of
every position, upcast them to fp32 and copy a shifted view: ~3 fp32 copies of T x vocab, 23 GiB
at 8K and 35 GiB at 12K for Gemma's 256000-token vocabulary (measured on the reference path). Here:

- only positions whose (shifted) label is not -100 are projected at all;
- the projection + cross-entropy runs over chunks of rows, so at most one chunk of fp32 logits
  exists at a time; the gradient w.r.t. the hidden states is computed in the same pass (the
  chunk's softmax is at hand), so nothing is recomputed in backward.

The loss is the same mean over labelled tokens as `CrossEntropyLoss()` (NaN when no token has a
label, as there); the logits are computed in the dtype the reference's `lm_head` uses (the
autocast dtype under mixed precision, else the weight's).
"""

from __future__ import annotations

import types
from typing import Optional

import torch

IGNORE_INDEX = -100
# fp32 logits per chunk are kept near this many bytes (1 GiB): ~1048 rows for Gemma's vocabulary.
CHUNK_BYTES = 1 << 30


def chunk_rows(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return int(min(8192, max(128, chunk_bytes // (4 * vocab_size))))


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for `device_type`, or None (torch >= 2.4 API, older fallback)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):  # torch < 2.4
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return autocast_dtype(weight.device.type) or weight.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), chunked; grads made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows: int, dtype: torch.dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows].to(dtype)
            t = targets[start:start + rows]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                # d(sum of losses)/d(logits) = softmax - one_hot, built in place over the logits.
                probs = logits.sub_(lse[:, None]).exp_()
                probs.scatter_add_(1, t[:, None], torch.full_like(lse[:, None], -1.0))
                g = probs.to(dtype)
                del logits, probs
                if need_h:
                    grad_h[start:start + rows] = (g @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_output.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_output).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   rows: Optional[int] = None) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions: the reference's loss, chunked."""
    targets = labels[..., 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    h = hidden[..., :-1, :][keep]
    t = targets[keep]
    count = t.numel()
    if count == 0:  # CrossEntropyLoss(mean) over no labels is NaN; keep that, with a graph
        return hidden.sum() * float("nan")
    total = LinearCrossEntropy.apply(h, weight, t, rows or chunk_rows(weight.shape[0]), _compute_dtype(weight))
    return total / count


def _chunked_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                     inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                     output_hidden_states=None, return_dict=None, **kwargs):
    """Drop-in for the 4.38.2 `*ForCausalLM.forward`: with labels, returns the loss and no logits."""
    if labels is None:  # generation / plain logits: the original forward
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids, past_key_values=past_key_values,
                                  inputs_embeds=inputs_embeds, labels=None, use_cache=use_cache,
                                  output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                  return_dict=return_dict, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return_dict = return_dict if return_dict is not None else self.config.use_return_dict
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         return_dict=True, **kwargs)
    loss = causal_lm_loss(outputs[0], self.lm_head.weight, labels, getattr(self, "_reviewgpt_loss_rows", None))
    if not return_dict:
        return (loss,) + tuple(outputs.to_tuple()[1:])
    return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values,
                                  hidden_states=outputs.hidden_states, attentions=outputs.attentions)


SUPPORTED = ("GemmaForCausalLM", "MistralForCausalLM", "LlamaForCausalLM")


def find_causal_lm(model):
    """The transformers *ForCausalLM inside a (peft-wrapped) model, or None."""
    for module in model.modules():
        if type(module).__name__ in SUPPORTED:
            return module
    return None


def patch_chunked_loss(model, rows: Optional[int] = None) -> bool:
    """Replace the causal LM's forward on this instance only; False if the model is not supported."""
    lm = find_causal_lm(model)
    if lm is None:
        return False
    lm.forward = types.MethodType(_chunked_forward, lm)
    lm._reviewgpt_loss_rows = rows
    return True


def unpatch_chunked_loss(model) -> None:
    lm = find_causal_lm(model)
    if lm is not None and "forward" in vars(lm):
        del lm.forward
    if lm is not None:
        vars(lm).pop("_reviewgpt_loss_rows", None)
