"""Generate one review per paper, appending JSONL lines as they are written.

The model folder may be a merged model (`reviewgpt merge`), a training run's adapter folder
(base + adapter, unmerged, in 4-bit when it was trained so and a GPU is here) or a plain base
model; `reviewgpt.models.load_for_inference` loads all three. The prompt is built by the same
`PromptEncoder` as training, with the paper trimmed to the input budget: by default the trained
length minus the longest review (8192 - 1024 = 7168 tokens for gemma-7b-it, as the reference
truncated its inputs). Papers are generated in batches of similar length (left-padded).

A rerun skips papers already in the output file, so an interrupted run loses at most the batch in
progress. Each line is appended whole (reviewgpt.files.append_line) and records the model that wrote
it (run.model_fingerprint): a rerun with another model, or onto a file of other lines, is refused
instead of mixing reviews or eating the user's lines. Only a last line that a kill cut short, and
that starts as this module's lines do, is dropped; an --output that is --papers is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.files import append_line, refuse_existing_folder, refuse_output_is_input

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = run.DEFAULT_MAX_NEW_TOKENS


@dataclass(frozen=True)
class GenerationSettings:
    max_input_tokens: Optional[int] = None  # None: the recipe's, else the trained length - max_new_tokens
    max_new_tokens: Optional[int] = None  # None: the recipe's, else 1024
    temperature: float = 0.0
    top_p: float = 1.0
    template: Optional[str] = None
    limit: Optional[int] = None
    batch_size: int = 8
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens (CTRL's penalty, as in HF generate)
    quantize: Optional[bool] = None  # None: as the run was trained (4-bit on a GPU)


# Every review line starts with its id (json.dumps keeps the row's key order): a cut-short last line
# that starts so is one of ours; anything else in the file is someone else's.
LINE_START = b'{"id": '


def done_ids(output_path: Path, fingerprint: Optional[str] = None) -> set:
    """Ids already reviewed in `output_path` (by the model of `fingerprint`, when given).

    A last line without its newline that starts as a review line does is what a kill left of a
    line being appended: it is dropped (the file is cut to the line before it). Any other line that
    is not a review, or a review by another model, stops the run: the file is not ours to change."""
    if not output_path.is_file():
        return set()
    data = output_path.read_bytes()
    lines = data.split(b"\n")
    ids, offset = set(), 0
    for number, line in enumerate(lines, start=1):
        torn = number == len(lines) and line != b""  # no newline after it
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = ValueError
        if torn and row is ValueError and line.startswith(LINE_START):
            log.warning("%s:%d: dropping a last line cut short by an earlier kill", output_path, number)
            with open(output_path, "r+b") as f:
                f.truncate(offset)
            break
        if row is ValueError or (row is not None and not (isinstance(row, dict) and "id" in row)):
            raise UserError(f"{output_path}:{number}: not a review line of `reviewgpt review`; pass another --output "
                            "file (this one holds other lines).")
        if row is not None:
            if fingerprint and row.get("model_fingerprint", fingerprint) != fingerprint:
                raise UserError(f"{output_path}:{number}: a review by another model ({row.get('model')}, since "
                                "changed or replaced); pass another --output, or delete the file to review again.")
            ids.add(str(row["id"]))
        offset += len(line) + 1
    return ids


def prompt_budget(settings: GenerationSettings, meta: dict, max_new: int) -> int:
    return run.prompt_budget(meta, max_new, settings.max_input_tokens)


def stop_token_ids(tokenizer, template) -> List[int]:
    ids = [tokenizer.eos_token_id]
    for text in template.stop_strings:
        piece = tokenizer.convert_tokens_to_ids(text)
        if piece is not None and piece != tokenizer.unk_token_id:
            ids.append(piece)
    return ids


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


def generate_reviews(model_dir, papers_path, output_path, settings: GenerationSettings = GenerationSettings()) -> dict:
    import torch
    from tqdm.auto import tqdm

    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.rating import parse_rating
    from reviewgpt.data.records import load_papers
    from reviewgpt.data.tokenization import PromptEncoder, pad_batch
    from reviewgpt.eval.coverage import covered_criteria
    from reviewgpt.eval.likelihood import choose_template, fit_prompt_budget
    from reviewgpt.models import load_for_inference

    model_dir, output_path = Path(model_dir), Path(output_path)
    refuse_output_is_input(output_path, {"--papers": papers_path})
    refuse_existing_folder(output_path)
    papers = load_papers(papers_path)
    if settings.limit:
        papers = papers[: settings.limit]
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder; pass a `reviewgpt train` run folder, a merged "
                        "model or a model folder.")
    fingerprint = run.model_fingerprint(model_dir)
    already = done_ids(output_path, fingerprint)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    open(output_path, "a").close()  # a read-only or missing place fails now, not after the first batch
    todo = [p for p in papers if p.id not in already]
    log.info("%d paper(s), %d already reviewed in %s", len(papers), len(papers) - len(todo), output_path)
    if not todo:
        return {"papers": len(papers), "written": 0, "skipped": len(papers), "output": str(output_path)}

    loaded = load_for_inference(model_dir, quantize=settings.quantize)
    meta = loaded.metadata or {}
    template = get_template(choose_template(loaded, settings.template))
    tokenizer = loaded.tokenizer
    encoder = PromptEncoder(tokenizer, template)
    max_new = settings.max_new_tokens or meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    budget = fit_prompt_budget(prompt_budget(settings, meta, max_new), max_new, loaded.model)
    stop_ids = stop_token_ids(tokenizer, template)
    prompts = []
    for paper in todo:
        try:
            ids, paper_tokens, kept = encoder.encode_prompt(paper.paper, budget)
        except ValueError as exc:
            raise UserError(f"--max-input-tokens {budget}: {exc}; raise it.") from None
        prompts.append((paper, ids, paper_tokens, kept))
    prompts.sort(key=lambda p: -len(p[1]))  # similar lengths together: little padding
    device = next(loaded.model.parameters()).device
    sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) \
        if settings.temperature > 0 else dict(do_sample=False)
    if settings.repetition_penalty != 1.0:
        sampling["repetition_penalty"] = settings.repetition_penalty
    written = 0
    with tqdm(total=len(prompts), desc="reviewing", unit="paper") as progress:
        for start in range(0, len(prompts), settings.batch_size):
            chunk = prompts[start:start + settings.batch_size]
            batch = pad_batch([{"input_ids": ids} for _, ids, _, _ in chunk], tokenizer.pad_token_id, side="left")
            with torch.no_grad(), last_position_logits(loaded.model):
                generated = loaded.model.generate(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id, **sampling)
            width = batch["input_ids"].shape[1]
            for (paper, ids, paper_tokens, kept), row_ids in zip(chunk, generated[:, width:].tolist()):
                stop_at = next((i for i, t in enumerate(row_ids) if t in stop_ids), None)
                tokens = row_ids if stop_at is None else row_ids[: stop_at + 1]
                review = tokenizer.decode(tokens, skip_special_tokens=True)
                for text in template.stop_strings:
                    review = review.split(text)[0]
                row = {
                    "id": paper.id,
                    "paper_id": paper.id,
                    "review": review.strip(),
                    "criteria": covered_criteria(review),
                    "rating": parse_rating(review),  # the review's "Rating: N/10" line, else null
                    "model": str(model_dir),
                    "model_fingerprint": fingerprint,
                    "template": template.name,
                    "input_tokens": len(ids),
                    "paper_tokens": paper_tokens,
                    "paper_truncated": kept < paper_tokens,
                    "generated_tokens": len(tokens),
                    "finish_reason": "length" if stop_at is None else "stop",
                }
                append_line(output_path, json.dumps(row, ensure_ascii=False))
            written += len(chunk)
            progress.update(len(chunk))
    return {"papers": len(papers), "written": written, "skipped": len(papers) - len(todo), "output": str(output_path),
            "template": template.name, "max_input_tokens": budget, "max_new_tokens": max_new,
            "repetition_penalty": settings.repetition_penalty}
