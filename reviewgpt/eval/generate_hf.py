"""`review --engine hf`: transformers' own `generate` in left-padded batches, the path before the fast
engine (reviewgpt.eval.engine), kept for models the engine cannot run and to compare with it."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple


@contextlib.contextmanager
def last_position_logits(model):
    """Project only the last position onto the vocabulary while generating.

    `generate` reads only the last position's logits, but transformers 4.38.2 computes and upcasts
    to fp32 those of every prompt position: batch x prompt x vocab floats (20 x 7168 x 49152 x 4 bytes
    = 28 GB for SmolLM2), which caps the batch. Scoped: the head is restored afterwards.
    """
    from reviewgpt.eval.likelihood import decoder_and_head

    _, head = decoder_and_head(model)
    original = head.forward
    head.forward = lambda hidden: original(hidden[:, -1:, :])
    try:
        yield
    finally:
        del head.forward


def cut_at_stop(row_ids: List[int], stop_ids) -> Tuple[List[int], Optional[int]]:
    """The generated tokens up to and with the first stop token, and its index (None: no stop)."""
    stop_at = next((i for i, t in enumerate(row_ids) if t in stop_ids), None)
    return (row_ids if stop_at is None else row_ids[: stop_at + 1]), stop_at


def generate_hf(loaded, prompts: List[List[int]], decoding, batch_size: int) -> Iterator[tuple]:
    """(index into prompts, tokens, stop index) per prompt, by transformers' `generate` in left-padded
    batches of `batch_size` consecutive prompts: the path before the fast engine (`--engine hf`)."""
    import torch

    from reviewgpt.data.tokenization import pad_batch

    model, pad_id = loaded.model, loaded.tokenizer.pad_token_id
    device = next(model.parameters()).device
    sampling = dict(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p) \
        if decoding.temperature > 0 else dict(do_sample=False)
    if decoding.repetition_penalty != 1.0:
        sampling["repetition_penalty"] = decoding.repetition_penalty
    if decoding.no_repeat_ngram_size:
        sampling["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
    if decoding.temperature > 0:
        torch.manual_seed(decoding.seed)
    stop_ids = list(decoding.stop_ids) or None
    for start in range(0, len(prompts), batch_size):
        batch = pad_batch([{"input_ids": ids} for ids in prompts[start:start + batch_size]], pad_id, side="left")
        with torch.no_grad(), last_position_logits(model):
            generated = model.generate(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=decoding.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id, **sampling)
        width = batch["input_ids"].shape[1]
        for offset, row_ids in enumerate(generated[:, width:].tolist()):
            tokens, stop_at = cut_at_stop(row_ids, decoding.stop_ids)
            yield start + offset, tokens, stop_at
