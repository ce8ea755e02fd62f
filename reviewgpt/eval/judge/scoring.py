"""Log-probabilities of chosen tokens without materialising the full logits.

transformers 4.38.2's `*ForCausalLM.forward` computes fp32 logits for every position (T x vocab;
~8 GiB at 8K tokens for Gemma's 256K vocabulary). Scoring an answer needs
only the few positions before it, so these helpers run the decoder (`model.base_model`) and apply
the output embedding to those positions alone. Shared by the local judge and the needle test.
"""

from __future__ import annotations


def hidden_states(model, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
    """(last hidden states [1, T, H], past) from the decoder stack of a causal LM."""
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=past_key_values,
        use_cache=use_cache,
        return_dict=True,
    )
    return out.last_hidden_state, (out.past_key_values if use_cache else None)


def logits_at(model, hidden):
    """Float logits for the given hidden states (any leading shape)."""
    return model.get_output_embeddings()(hidden).float()


def continuation_logprobs(model, input_ids, start: int, attention_mask=None):
    """Log-probability of each token `input_ids[0, start:]` given everything before it (1-D tensor)."""
    import torch

    if not 0 < start < input_ids.shape[1]:
        raise ValueError(f"start must be inside the sequence (1..{input_ids.shape[1] - 1}), not {start!r}")
    with torch.no_grad():
        hidden, _ = hidden_states(model, input_ids, attention_mask=attention_mask)
        logits = logits_at(model, hidden[0, start - 1 : -1])
        targets = input_ids[0, start:]
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
