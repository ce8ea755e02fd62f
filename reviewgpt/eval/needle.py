"""Needle in a haystack: can the model recall a fact hidden at a given depth of a long context?

For each context length and depth, a haystack of filler text (paper text by default) hides one
needle sentence, and a question at the end asks for it:

    <bos> filler ... NEEDLE ... filler  QUESTION ANSWER

Two measurements per cell: the answer's mean per-token loss given the haystack (teacher forced;
low = the model uses the needle), and retrieval (greedy generation after the question contains
the answer). The reference recipe's heatmap of this showed Mistral's effective reach is its
4K sliding window.

The measurement must see what the model really sees. transformers 4.38.2's Mistral SDPA path
builds its causal mask *without* the sliding window (`_prepare_4d_causal_attention_mask_for_sdpa`
is called without `sliding_window`), so a plain forward pass with SDPA attends to the whole
context and would overstate the model's reach. For models with a sliding window under eager or
SDPA attention we therefore pass an explicit 4-D mask with the window (transformers 4.38.2 passes
4-D masks through unchanged); flash-attention 2 applies the window itself.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.eval.needle_results import CSV_FIELDS, plot_heatmap, read_rows

log = logging.getLogger(__name__)

CSV_FILE, PNG_FILE, CONFIG_FILE = run.NEEDLE_CSV, run.NEEDLE_PNG, run.NEEDLE_CONFIG  # the run folder's format


@dataclass(frozen=True)
class NeedleConfig:
    lengths: Sequence[int] = field(metadata={"help": "context lengths in tokens (haystack + question + answer)"})
    depths: Sequence[float] = field(metadata={"help": "needle depths in percent of the filler (0 = start)"})
    needle: str = "The secret number that the review committee chose for this paper is 7341."
    question: str = (
        "\n\nQuestion: what is the secret number that the review committee chose for this paper?\n"
        "Answer: The secret number that the review committee chose for this paper is"
    )
    answer: str = " 7341."
    max_new_tokens: int = 8
    attention: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})

    def __post_init__(self):
        if not self.lengths or any(n < 16 for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= 16, not {list(self.lengths)!r}")
        if not self.depths or any(not 0 <= d <= 100 for d in self.depths):
            raise ValueError(f"depths must be percentages in [0, 100], not {list(self.depths)!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens!r}")
        if self.attention not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"attention must be sdpa, eager or flash_attention_2, not {self.attention!r}")
        if not self.answer.strip(" .") or self.answer.strip(" .") in self.question:
            raise ValueError(f"answer {self.answer!r} must be non-empty and not given away by the question")


@dataclass(frozen=True)
class Haystack:
    ids: List[int]
    answer_start: int  # index of the first answer token; the answer runs to the end
    needle_position: int  # index of the needle's first token


def _tokens(tokenizer, text: str) -> List[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _split_question_answer(tokenizer, question: str, answer: str):
    """Token ids of question and answer as they come out when tokenized together (the answer's first
    token may merge with the question's last character otherwise)."""
    joint, alone = _tokens(tokenizer, question + answer), _tokens(tokenizer, question)
    cut = 0
    while cut < min(len(joint), len(alone)) and joint[cut] == alone[cut]:
        cut += 1
    if cut == len(joint):
        raise UserError(f"the answer {answer!r} adds no tokens after the question; choose another --answer.")
    return joint[:cut], joint[cut:]


def build_haystack(
    tokenizer, filler_ids: Sequence[int], length: int, depth_percent: float, config: NeedleConfig
) -> Haystack:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    needle = _tokens(tokenizer, " " + config.needle.strip() + " ")
    question, answer = _split_question_answer(tokenizer, config.question, config.answer)
    budget = length - len(bos) - len(needle) - len(question) - len(answer)
    if budget < 1:
        raise UserError(
            f"context length {length} cannot hold the needle, question and answer "
            f"({length - budget} tokens); pass longer --lengths."
        )
    if not filler_ids:
        raise UserError("the filler text is empty; pass --filler with a text or JSONL file of papers.")
    filler = [filler_ids[i % len(filler_ids)] for i in range(budget)]  # repeat a short filler to fill
    at = round(budget * depth_percent / 100)
    ids = bos + filler[:at] + needle + filler[at:] + question + answer
    return Haystack(ids=ids, answer_start=len(ids) - len(answer), needle_position=len(bos) + at)


def sliding_window_mask(model, query_start: int, query_length: int, key_length: int):
    """A 4-D 0/1 mask [1, 1, q, k] that lets position i see positions (i - window, i], or None when
    the model's own attention already applies the right mask (no window, or flash-attention 2)."""
    import torch

    window = getattr(model.config, "sliding_window", None)
    if not window or getattr(model.config, "_attn_implementation", "eager") == "flash_attention_2":
        return None
    q = torch.arange(query_start, query_start + query_length, device=model.device)[:, None]
    k = torch.arange(key_length, device=model.device)[None, :]
    visible = (k <= q) & (k > q - window)  # transformers' eager convention: `window` keys incl. itself
    return visible.to(model.dtype)[None, None]


def answer_loss(model, haystack: Haystack) -> float:
    """Mean negative log-likelihood per answer token, given the haystack and the question."""
    import torch

    from reviewgpt.eval.judge.scoring import continuation_logprobs

    ids = torch.tensor([haystack.ids], device=model.device)
    mask = sliding_window_mask(model, 0, len(haystack.ids), len(haystack.ids))
    logprobs = continuation_logprobs(model, ids, haystack.answer_start, attention_mask=mask)
    return float(-logprobs.mean())


def greedy_answer(model, tokenizer, haystack: Haystack, max_new_tokens: int) -> str:
    """Greedy continuation after the question, with the same masking as `answer_loss`."""
    import torch

    from reviewgpt.eval.judge.scoring import hidden_states, logits_at

    context = haystack.ids[: haystack.answer_start]
    generated: List[int] = []
    with torch.no_grad():
        ids = torch.tensor([context], device=model.device)
        hidden, past = hidden_states(
            model, ids, sliding_window_mask(model, 0, len(context), len(context)), use_cache=True
        )
        for step in range(max_new_tokens):
            token = int(logits_at(model, hidden[0, -1]).argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
            if step + 1 == max_new_tokens:
                break
            position = len(context) + step
            mask = sliding_window_mask(model, position, 1, position + 1)
            hidden, past = hidden_states(
                model, torch.tensor([[token]], device=model.device), mask, past, use_cache=True
            )
    return tokenizer.decode(generated, skip_special_tokens=True)


def measure_cell(model, tokenizer, filler_ids, length: int, depth: float, config: NeedleConfig) -> Dict:
    haystack = build_haystack(tokenizer, filler_ids, length, depth, config)
    with_answer = greedy_answer(model, tokenizer, haystack, config.max_new_tokens)
    return {
        "length": length,
        "depth_percent": depth,
        "needle_position": haystack.needle_position,
        "tokens_needle_to_answer": haystack.answer_start - haystack.needle_position,
        "answer_loss": round(answer_loss(model, haystack), 6),
        "answer_tokens": len(haystack.ids) - haystack.answer_start,
        "retrieved": config.answer.strip(" .") in with_answer,
        "generated": with_answer,
    }


def load_filler(path=None) -> str:
    """Filler text: a .txt file, or the 'paper' (or 'input') texts of a JSONL/JSON data file;
    default: the synthetic sample papers (no data leaves the package)."""
    if path is None:
        from reviewgpt.data.sample import sample_records

        return "\n\n".join(dict.fromkeys(r["paper"] for r in sample_records(n_papers=12, reviews_per_paper=1)))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--filler {path}: no such file; pass a .txt file or a JSONL file of papers.")
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    from reviewgpt.data.records import load_papers

    return "\n\n".join(p.paper for p in load_papers(path))


def load_needle_model(model_dir: str, attention: str, device: str = "auto"):
    import torch

    from reviewgpt.models import attention_alternatives, load_model, load_tokenizer, resolve_attention

    if not Path(model_dir).is_dir():
        raise UserError(f"--model {model_dir!r} is not a directory; pass a transformers model directory.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # sdpa is eager on a torch without it (torch < 2.1.1); the choice goes into the config (load_model)
    resolved = resolve_attention(attention)
    try:
        model, family, attention = load_model(model_dir, device=device, attention=resolved,
                                              dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                              fix=f"pass --attention {attention_alternatives(resolved)}")
    except UserError as exc:
        raise UserError(str(exc).replace("--attn-implementation", "--attention")) from None
    model.eval()
    log.info(
        "needle model %s: %s attention, sliding window %s",
        model_dir,
        model.config._attn_implementation,
        getattr(model.config, "sliding_window", None),
    )
    return model, load_tokenizer(model_dir, family)


def _set_aside(output_dir: Path) -> Path:
    """Rename needle.csv (and its config) to the first free needle.previous-N.csv; its new path."""
    n = 1
    while (output_dir / f"needle.previous-{n}.csv").exists():
        n += 1
    kept = output_dir / f"needle.previous-{n}.csv"
    (output_dir / CSV_FILE).rename(kept)
    if (output_dir / CONFIG_FILE).exists():
        (output_dir / CONFIG_FILE).rename(output_dir / f"needle_config.previous-{n}.json")
    return kept


def _done_cells(output_dir: Path, config: NeedleConfig, model_dir: str):
    """(rows of an earlier run with the same settings, so a long GPU run resumes; where the results
    of an earlier run with other settings were moved, or None). Nothing measured is overwritten."""
    settings = {"model": str(model_dir), **asdict(config), "lengths": None, "depths": None}
    config_path, csv_path = output_dir / CONFIG_FILE, output_dir / CSV_FILE
    kept = None
    if csv_path.exists():
        earlier = json.loads(config_path.read_text()) if config_path.exists() else {}
        if earlier == settings:
            with open(csv_path, newline="") as f:
                return list(csv.DictReader(f)), None
        changed = sorted(k for k in {**settings, **earlier} if settings.get(k) != earlier.get(k))
        kept = _set_aside(output_dir)
        log.warning("%s holds results of other settings (%s); kept them as %s and measuring afresh",
                    csv_path, ", ".join(changed) or "no needle_config.json", kept)
    config_path.write_text(json.dumps(settings, indent=2) + "\n")
    with open(csv_path, "w", newline="") as f:
        csv.DictWriter(f, CSV_FIELDS).writeheader()
    return [], kept


def run_needle(
    model_dir: str, config: NeedleConfig, output_dir, filler_path=None, device: str = "auto", progress: bool = True
) -> Dict:
    """Measure every (length, depth) cell, appending to needle.csv as it goes; draw the heatmap."""
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_needle_model(model_dir, config.attention, device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.model_type == "gemma" and limit and max(config.lengths) > 2 * limit:
        raise UserError(
            f"length {max(config.lengths)} is beyond what transformers 4.38.2's Gemma can mask "
            f"(2 x max_position_embeddings = {2 * limit}); pass shorter --lengths."
        )
    filler_ids = _tokens(tokenizer, load_filler(filler_path))
    earlier, kept = _done_cells(output_dir, config, model_dir)
    done = {(int(r["length"]), float(r["depth_percent"])) for r in earlier}
    cells = [(n, d) for n in config.lengths for d in config.depths if (n, float(d)) not in done]
    log.info("needle: %d cells to measure, %d done before; filler %d tokens", len(cells), len(done), len(filler_ids))
    for length, depth in tqdm(cells, desc="needle", unit="cell", disable=not progress):
        row = measure_cell(model, tokenizer, filler_ids, length, depth, config)
        with open(output_dir / CSV_FILE, "a", newline="") as f:  # each cell saved as it is measured
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
    rows = read_rows(output_dir / CSV_FILE)
    png = plot_heatmap(
        rows,
        output_dir / PNG_FILE,
        title=f"{Path(model_dir).name}: needle in a haystack (window {getattr(model.config, 'sliding_window', None)})",
    )
    return {
        "cells": len(rows),
        "measured": len(cells),
        "csv": str(output_dir / CSV_FILE),
        "png": str(png),
        "retrieved": sum(r["retrieved"] for r in rows),
        **({"earlier_results_kept_as": str(kept)} if kept else {}),
    }
