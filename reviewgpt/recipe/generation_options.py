"""A recipe's decoding defaults for `reviewgpt review` (`Recipe.generation`, the `generation:` block).

Saved with the run (reviewgpt_recipe.yaml, and a merged model's reviewgpt.json), so `review` decodes
a model the way its recipe says unless a flag says otherwise. Greedy decoding loops on small models
(a trained SmolLM2 repeated one sentence twenty times: docs/quality.md), so each recipe's block is
chosen by measurement on the dev split.

Imports nothing from reviewgpt but the field machinery, so recipe and eval both read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from reviewgpt.recipe.fields import AT_LEAST_0, POSITIVE, Range, check_ranges, help_field


@dataclass(frozen=True)
class GenerationOptions:
    repetition_penalty: float = help_field("> 1 makes tokens already in the prompt or the review less likely "
                                           "(CTRL's penalty, as transformers' generate); 1 = off", POSITIVE,
                                           default=1.0)
    no_repeat_ngram_size: int = help_field("never repeat an n-gram of this many tokens within the review; 0 = off",
                                           AT_LEAST_0, default=0)
    temperature: float = help_field("0 = greedy; > 0 samples", AT_LEAST_0, default=0.0)
    top_p: float = help_field("nucleus sampling when temperature > 0", Range(0, 1, low_open=True), default=1.0)
    seed: int = help_field("sampling seed: the same seed gives the same reviews", Range(0, 2**32 - 1), default=0)

    def __post_init__(self):
        check_ranges(self, "generation.")


GENERATION_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationOptions))


def resolve(recorded: dict, **given) -> GenerationOptions:
    """The decoding to use: each option as given (a flag) when not None, else as the model's recipe
    recorded it (`recorded`: its `generation` block, possibly of an older run without some keys), else
    the default."""
    values = {k: v for k, v in (recorded or {}).items() if k in GENERATION_FIELDS}
    values.update({k: v for k, v in given.items() if v is not None})
    return GenerationOptions(**values)
