"""The reviewer prompt, its templates, and trl's `formatting_func`.

A template writes a training text as five parts, so that tokenization can trim the paper and
keep the review whole (see `reviewgpt.data.tokenization`):

    head + {paper} + tail + {review} + end

Two kinds, tokenized the way each model's own tooling does it (tests compare the ids):

- **Alpaca texts** (`alpaca-reference`, `alpaca`) are tokenized as trl 0.7.11's SFTTrainer does:
  the whole text with the tokenizer's own special tokens (`add_special_tokens=True`: Gemma's and
  Llama's BOS). `alpaca-reference` reproduces the reference recipe's text byte for byte (no
  newlines between sections, as the reference recipe wrote it) and, like trl, adds no EOS; `alpaca`
  adds newlines and the EOS, so a model trained on it learns to stop.
- **Chat formats** (`gemma-it`, `mistral-inst`, `smollm2-chatml`) write their control tokens,
  BOS included, in the text: their ids equal `tokenizer.apply_chat_template` of the two-turn
  conversation (user: instruction + blank line + paper; assistant: review). Paper and review are
  stripped of surrounding whitespace, as Gemma's template does (`| trim`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Union

INSTRUCTION = (
    "You are a professional machine learning conference reviewer who reviews a given paper and "
    "considers 4 criteria: ** importance and novelty **, ** potential reasons for acceptance **, "
    "** potential reasons for rejection **, and ** suggestions for improvement **. "
    "The given paper is as follows."
)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)

# The four criteria a review should cover (used by the review structure check as well).
CRITERIA = (
    "importance and novelty",
    "reasons for acceptance",
    "reasons for rejection",
    "suggestions for improvement",
)


# SmolLM2-Instruct's chat template adds this system turn when a conversation has none.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class Template:
    name: str
    head: str
    tail: str
    end: str = ""
    # A chat format: control tokens (BOS included) are written in the text, which is tokenized
    # without the tokenizer's own additions, as apply_chat_template does. Not chat: an Alpaca
    # text, tokenized with the tokenizer's special tokens, as trl 0.7.11 does.
    chat: bool = False
    # Append the tokenizer's EOS after `end` (a text that does not write its own end token).
    append_eos: bool = False
    # Strings that end a generated review (besides the tokenizer's EOS).
    stop_strings: tuple = ()

    def content(self, text: str) -> str:
        """Paper or review as the template writes it (chat formats strip it, as Gemma's does)."""
        return text.strip() if self.chat else text

    def prompt(self, paper: str) -> str:
        return f"{self.head}{self.content(paper)}{self.tail}"

    def text(self, paper: str, review: str) -> str:
        return f"{self.head}{self.content(paper)}{self.tail}{self.content(review)}{self.end}"


TEMPLATES: Dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="alpaca-reference",
            head=f"{ALPACA_PREAMBLE}### Instruction:{INSTRUCTION}### Input:",
            tail="### Response:",
        ),
        Template(
            name="alpaca",
            head=f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{INSTRUCTION}\n\n### Input:\n",
            tail="\n\n### Response:\n",
            append_eos=True,
        ),
        Template(
            name="gemma-it",
            # Gemma has no system role: the instruction goes into the user turn.
            head=f"<bos><start_of_turn>user\n{INSTRUCTION}\n\n",
            tail="<end_of_turn>\n<start_of_turn>model\n",
            end="<end_of_turn>\n",
            chat=True,
            stop_strings=("<end_of_turn>",),
        ),
        Template(
            name="mistral-inst",
            head=f"<s>[INST] {INSTRUCTION}\n\n",
            tail=" [/INST]",
            end="</s>",
            chat=True,
        ),
        Template(
            name="smollm2-chatml",
            head=f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}\n\n",
            tail="<|im_end|>\n<|im_start|>assistant\n",
            end="<|im_end|>\n",
            chat=True,
            stop_strings=("<|im_end|>",),
        ),
    )
}


def get_template(name: str) -> Template:
    from reviewgpt.errors import UserError

    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATES)}.") from None


Batch = Dict[str, Union[List[str], str]]


def _column(batch: Batch, *names: str):
    for name in names:
        if name in batch:
            return batch[name]
    raise KeyError(f"formatting_func needs one of the columns {names}; the batch has {sorted(batch)}")


def make_formatting_func(template: str = "alpaca-reference") -> Callable[[Batch], Union[List[str], str]]:
    """A `formatting_func` for trl 0.7.11's SFTTrainer using `template`.

    trl calls it with a batch (dict of lists) when `packing=False` and expects a list of strings;
    with `packing=True` it passes one example (dict of strings) and expects one string.
    Records may use `{input, output}` (the recipe's shape) or `{paper, review}`.
    """
    chosen = get_template(template)

    def formatting_func(batch: Batch) -> Union[List[str], str]:
        papers = _column(batch, "input", "paper")
        reviews = _column(batch, "output", "review")
        if isinstance(papers, str):
            return chosen.text(papers, reviews)
        return [chosen.text(p, r) for p, r in zip(papers, reviews)]

    formatting_func.__name__ = f"formatting_func_{template.replace('-', '_')}"
    return formatting_func


formatting_func = make_formatting_func("alpaca-reference")
formatting_func.__doc__ = (
    "trl 0.7.11 `formatting_func` reproducing the reference Alpaca text; see `make_formatting_func`."
)
