"""The reviewer prompt, its templates, and trl's `formatting_func`.

A template splits a training text into four parts so that tokenization can trim the paper and
keep the review whole (see `reviewgpt.tokenization`):

    head + {paper} + tail + {review} + end

`alpaca-reference` reproduces the reference recipe's text byte for byte (no newlines between
sections, as REFERENCE.md records it). `gemma-it` and `mistral-inst` are the models' own chat
formats; templates that do not write the BOS token in their text get it from the tokenizer, as
trl's `add_special_tokens=True` did in the reference run.
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


@dataclass(frozen=True)
class Template:
    name: str
    head: str
    tail: str
    end: str = ""
    # True when `head` itself starts with the BOS token's text (chat formats); otherwise the
    # tokenizer's BOS id is prepended when the tokenizer has one.
    text_has_bos: bool = False
    # Extra strings that end a generated review (besides the tokenizer's EOS).
    stop_strings: tuple = ()

    def prompt(self, paper: str) -> str:
        return f"{self.head}{paper}{self.tail}"

    def text(self, paper: str, review: str) -> str:
        return f"{self.head}{paper}{self.tail}{review}{self.end}"


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
        ),
        Template(
            name="gemma-it",
            # Gemma has no system role: the instruction goes into the user turn.
            head=f"<bos><start_of_turn>user\n{INSTRUCTION}\n\n",
            tail="<end_of_turn>\n<start_of_turn>model\n",
            end="<end_of_turn>",
            text_has_bos=True,
            stop_strings=("<end_of_turn>",),
        ),
        Template(
            name="mistral-inst",
            head=f"<s>[INST] {INSTRUCTION}\n\n",
            tail=" [/INST]",
            end="</s>",
            text_has_bos=True,
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
