"""reviewgpt: fine-tune open LLMs into reviewers of ML papers, reproducibly.

    import reviewgpt
    reviewgpt.formatting_func({"input": ["paper"], "output": ["review"]})   # trl 0.7.11
    bnb_config, lora_config = reviewgpt.qlora_config("gemma")

Heavy modules (torch, transformers) load only when a function that needs them is called.
Importing reviewgpt turns the Hugging Face hub off unless HF_HUB_OFFLINE is set (reviewgpt.offline).
"""

__version__ = "0.1.0"

from reviewgpt.offline import offline_by_default  # noqa: E402

offline_by_default()  # before anything imports huggingface_hub, which reads it once

from reviewgpt.data.prompt import INSTRUCTION, TEMPLATES, formatting_func, make_formatting_func  # noqa: E402
from reviewgpt.errors import UserError  # noqa: E402
from reviewgpt.models import qlora_config  # noqa: E402
from reviewgpt.recipe import Recipe, load_recipe  # noqa: E402

__all__ = [
    "INSTRUCTION",
    "TEMPLATES",
    "Recipe",
    "UserError",
    "formatting_func",
    "load_recipe",
    "make_formatting_func",
    "qlora_config",
]
