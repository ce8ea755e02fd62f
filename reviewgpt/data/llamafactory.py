"""LLaMA-Factory's view of the Alpaca export (llmtuner 0.6.3): token counts, and papers trimmed so
its cutoff never reaches the review.

LLaMA-Factory does not keep the response whole. When prompt + response exceed `cutoff_len`, its
`infer_max_len` shares the cutoff between them in proportion to their lengths, so a long paper
takes the review's tail with it: at the Mistral recipe's 12,288 tokens it cut the review of 40 of
the 40 real ICLR sample rows. `reviewgpt data prepare --tokenizer DIR --max-length N` therefore
trims each paper of the export (its head kept, the cut marked as in training) until the row fits,
counting tokens exactly as LLaMA-Factory does: its template's text around the user turn, each
piece tokenized on its own with `encode(add_special_tokens=False)`, BOS and EOS as token ids.

LLaMA-Factory computes the response's share as `int(cutoff * response / (prompt + response))`;
when the row fills the cutoff exactly, float rounding can make that one token short, so rows are
kept one token under the cutoff. `nox -s llamafactory` loads an export with LLaMA-Factory's own
`get_dataset` and checks every review arrives whole.

LLaMA-Factory joins the instruction and the input with "\n"; the instruction is exported with a
trailing "\n", so the user turn reads `INSTRUCTION\n\nPAPER`, as in reviewgpt's chat templates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from reviewgpt.data.prompt import INSTRUCTION
from reviewgpt.errors import UserError

# What the Alpaca export writes as `instruction` (see the module docstring).
EXPORT_INSTRUCTION = INSTRUCTION + "\n"
BOS = None  # a template piece that stands for the tokenizer's BOS id


@dataclass(frozen=True)
class LFTemplate:
    """One LLaMA-Factory 0.6.3 template, for a single-turn row without a system field."""

    before_user: Tuple = ()  # format_system applied to the default system prompt: BOS and/or text
    user: str = "{content}"  # format_user
    eos_in_response: bool = True  # False for efficient_eos templates (the EOS comes after the cutoff)


# llmtuner/data/template.py, version 0.6.3.
LF_TEMPLATES = {
    "mistral": LFTemplate(before_user=(BOS,), user=" [INST] {content} [/INST]"),
    "gemma": LFTemplate(before_user=(BOS,),
                        user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
                        eos_in_response=False),
    "alpaca": LFTemplate(before_user=("Below is an instruction that describes a task. Write a response that "
                                      "appropriately completes the request.\n\n",),
                         user="### Instruction:\n{content}\n\n### Response:\n"),
    "default": LFTemplate(user="Human: {content}\nAssistant: "),
    # ChatML (SmolLM2, the smollm2-135m recipe): no default system turn, and replace_eos makes
    # <|im_end|> the EOS that ends the response.
    "chatml": LFTemplate(user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"),
}


def _ids(tokenizer, text: str) -> List[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def row_lengths(tokenizer, template: LFTemplate, instruction: str, paper: str, review: str) -> Tuple[int, int]:
    """(prompt tokens, response tokens) of one Alpaca row as LLaMA-Factory encodes it."""
    content = "\n".join(part for part in (instruction, paper) if part)
    prompt = 0
    for piece in template.before_user:
        prompt += (1 if tokenizer.bos_token_id is not None else 0) if piece is BOS else len(_ids(tokenizer, piece))
    prompt += len(_ids(tokenizer, template.user.replace("{content}", content)))
    response = len(_ids(tokenizer, review)) + (1 if template.eos_in_response else 0)
    return prompt, response


def fit_paper(tokenizer, template: LFTemplate, paper: str, review: str, cutoff: int, source: str = "") -> str:
    """`paper`, its head cut (and the cut marked) so the row stays one token under `cutoff`."""
    from reviewgpt.data.tokenization import CUT_MARKER

    def excess(text: str) -> int:
        return sum(row_lengths(tokenizer, template, EXPORT_INSTRUCTION, text, review)) - (cutoff - 1)

    over = excess(paper)
    if over <= 0:
        return paper
    if excess(CUT_MARKER) > 0:
        needed = sum(row_lengths(tokenizer, template, EXPORT_INSTRUCTION, CUT_MARKER, review)) + 1
        raise UserError(f"{source}: the review needs {needed} tokens with the prompt in LLaMA-Factory's template, "
                        f"more than --max-length {cutoff}; raise --max-length or drop the record.")
    chars_per_token = len(paper) / max(1, len(_ids(tokenizer, paper)))
    keep = len(paper)
    while True:  # cut by the excess in tokens, measured on the whole row, until it fits
        keep = max(0, keep - int(over * chars_per_token) - 1)
        trimmed = paper[:keep] + CUT_MARKER
        over = excess(trimmed)
        if over <= 0:
            return trimmed


def fit_records(records: Sequence, tokenizer, template_name: str, cutoff: int) -> Tuple[list, int]:
    """(records with papers fitted to LLaMA-Factory's cutoff, how many papers were trimmed)."""
    from tqdm.auto import tqdm

    template = LF_TEMPLATES[template_name]
    fitted, trimmed = [], 0
    for r in tqdm(records, desc="fitting to LLaMA-Factory's cutoff", unit="rec", disable=len(records) < 50):
        paper = fit_paper(tokenizer, template, r.paper, r.review, cutoff, r.source)
        trimmed += paper != r.paper
        fitted.append(dataclasses.replace(r, paper=paper))
    return fitted, trimmed
