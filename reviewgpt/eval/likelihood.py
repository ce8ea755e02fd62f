"""`reviewgpt eval`: how likely a model finds the human reviews of held-out papers.

The figure is the mean negative log-likelihood per review token (nats) of each human review given
its paper, laid out exactly as in training (the template, the paper trimmed to `max_length`, the
review whole), and its perplexity exp(NLL). It needs no judge and no sampling: a fine-tune that
learned to review lowers it on papers it never saw. Tokens are pooled over all records (a long
review weighs more), and the 95% interval comes from resampling papers (records of one paper move
together, since they share the paper).

Only the positions that predict a review token are projected onto the vocabulary, a chunk at a
time, so no batch x length x vocab logits are ever held (Gemma's vocabulary is 256,000).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from reviewgpt.errors import UserError

log = logging.getLogger(__name__)

LOGIT_ROWS = 2048  # positions projected onto the vocabulary at a time


@dataclass(frozen=True)
class EvalSettings:
    template: Optional[str] = None  # None: the one the model was trained with, or its chat format
    max_length: Optional[int] = None  # None: the training length, else the model's context
    limit: Optional[int] = None  # first N records
    batch_tokens: int = 16384  # padded tokens per forward pass
    quantize: Optional[bool] = None  # None: as the run was trained (4-bit on a GPU)


def choose_template(loaded, requested: Optional[str]) -> str:
    from reviewgpt.data.chat_templates import chat_template_of
    from reviewgpt.data.prompt import get_template

    name = requested or loaded.template or chat_template_of(loaded.tokenizer)
    if not name:
        raise UserError("the model folder does not say which prompt template it was trained with and its tokenizer "
                        "has no chat template reviewgpt knows; pass --template (see `reviewgpt recipes --show`).")
    return get_template(name).name


def choose_max_length(loaded, requested: Optional[int]) -> int:
    if requested:
        return requested
    if loaded.max_seq_length:
        return int(loaded.max_seq_length)
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    if not context:
        raise UserError("the model's context length is unknown; pass --max-length N.")
    return int(context)


def fit_prompt_budget(budget: int, max_new_tokens: int, model) -> int:
    """The prompt budget of `review`, lowered so that prompt + max_new_tokens fit the model's positions
    (`eval` reads them too: `choose_max_length`). Past them transformers 4.38.2's Gemma and Llama
    fail with a tensor size mismatch once their causal-mask buffer is outgrown, and every model
    generates from positions it never saw."""
    from reviewgpt.models import model_positions

    positions = model_positions(model)
    if not positions or budget + max_new_tokens <= positions:
        return budget
    if max_new_tokens >= positions:
        raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for the paper in the model's {positions} "
                        "positions; pass a smaller --max-new-tokens (the paper and the review share them).")
    log.info("prompt budget %d + %d new tokens is more than the model's %d positions: papers are trimmed to a "
             "%d-token prompt", budget, max_new_tokens, positions, positions - max_new_tokens)
    return positions - max_new_tokens


def batches_by_tokens(lengths: List[int], batch_tokens: int) -> List[List[int]]:
    """Indices grouped longest first so that batch size x longest <= batch_tokens (at least one each)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    return batches + ([current] if current else [])


def decoder_and_head(model):
    """(the decoder stack, the LM head) of a causal LM, a PeftModel of one included."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.model, causal_lm.get_output_embeddings()


def sequence_nll(model, batch: Dict) -> List[tuple]:
    """(sum of NLL, labelled tokens) per sequence of a padded batch (labels -100 where no loss)."""
    import torch

    decoder, head = decoder_and_head(model)
    device = head.weight.device
    input_ids = batch["input_ids"].to(device)
    hidden = decoder(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False)[0]
    targets = batch["labels"][:, 1:].to(device)
    rows, cols = torch.nonzero(targets != -100, as_tuple=True)
    totals = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=device)
    for start in range(0, rows.numel(), LOGIT_ROWS):
        r, c = rows[start:start + LOGIT_ROWS], cols[start:start + LOGIT_ROWS]
        logits = head(hidden[r, c]).float()
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[r, c][:, None]).squeeze(1)
        totals.index_add_(0, r, nll.double())
    counts = torch.bincount(rows, minlength=input_ids.shape[0])
    return list(zip(totals.tolist(), counts.tolist()))


def bootstrap_interval(groups: Dict[str, tuple], samples: int = 1000, seed: int = 0) -> tuple:
    """95% percentile interval of sum(nll) / sum(tokens) when whole groups (papers) are resampled."""
    keys = sorted(groups)
    if len(keys) < 2:
        return (None, None)
    rng = random.Random(seed)
    means = []
    for _ in range(samples):
        nll = tokens = 0.0
        for key in rng.choices(keys, k=len(keys)):
            nll += groups[key][0]
            tokens += groups[key][1]
        means.append(nll / tokens)
    means.sort()
    return (means[int(0.025 * samples)], means[int(0.975 * samples) - 1])


def evaluate_reviews(model_dir, data_path, settings: EvalSettings = EvalSettings(), output=None) -> dict:
    """Mean review-token NLL of `data_path`'s records under the model; per-record rows to `output`."""
    import torch
    from tqdm.auto import tqdm

    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.records import load_records
    from reviewgpt.data.tokenization import PromptEncoder, ReviewTooLong, pad_batch
    from reviewgpt.models import load_for_inference

    records = load_records(data_path).records
    if settings.limit:
        records = records[: settings.limit]
    loaded = load_for_inference(model_dir, quantize=settings.quantize)
    template = choose_template(loaded, settings.template)
    max_length = choose_max_length(loaded, settings.max_length)
    encoder = PromptEncoder(loaded.tokenizer, get_template(template))
    examples, kept_records, skipped = [], [], []
    for record in records:
        try:
            examples.append(encoder.encode_example(record.paper, record.review, max_length, "review"))
            kept_records.append(record)
        except ReviewTooLong as exc:
            skipped.append(record.source)
            log.warning("%s: not evaluated: %s", record.source, exc)
    if not examples:
        raise UserError(f"{data_path}: no review fits max_length={max_length}; pass a larger --max-length.")

    started = time.time()
    results: List[Optional[tuple]] = [None] * len(examples)
    pad_id = loaded.tokenizer.pad_token_id
    batches = batches_by_tokens([len(e.input_ids) for e in examples], settings.batch_tokens)
    with torch.no_grad(), tqdm(total=len(examples), desc="review NLL", unit="rec") as progress:
        for indices in batches:
            batch = pad_batch([{"input_ids": examples[i].input_ids, "labels": examples[i].labels} for i in indices],
                              pad_id)
            for index, result in zip(indices, sequence_nll(loaded.model, batch)):
                results[index] = result
            progress.update(len(indices))

    rows, by_paper = [], {}
    for record, example, (nll, tokens) in zip(kept_records, examples, results):
        rows.append({"id": record.id, "paper_id": record.paper_id, "review_tokens": tokens,
                     "nll_sum": round(nll, 4), "nll": round(nll / tokens, 5), "input_tokens": len(example.input_ids),
                     "paper_truncated": example.paper_truncated})
        paper_nll, paper_tokens = by_paper.get(record.paper_id, (0.0, 0))
        by_paper[record.paper_id] = (paper_nll + nll, paper_tokens + tokens)
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    total_nll = sum(r[0] for r in results)
    total_tokens = sum(r[1] for r in results)
    mean = total_nll / total_tokens
    low, high = bootstrap_interval(by_paper)
    return {
        "model": str(model_dir),
        "model_kind": loaded.kind,
        "quantized": loaded.quantized,
        "data": str(data_path),
        "template": template,
        "max_length": max_length,
        "records": len(examples),
        "papers": len(by_paper),
        "skipped_review_too_long": len(skipped),
        "papers_truncated": sum(e.paper_truncated for e in examples),
        "review_tokens": total_tokens,
        "nll": round(mean, 5),
        "nll_ci95": [round(low, 5), round(high, 5)] if low is not None else None,
        "perplexity": round(math.exp(mean), 4),
        "seconds": round(time.time() - started, 1),
        "output": str(output) if output else None,
    }
