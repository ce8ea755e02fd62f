"""reviewgpt: fine-tune open LLMs into reviewers of ML papers, reproducibly.

    import reviewgpt
    reviewgpt.formatting_func({"input": ["paper"], "output": ["review"]})   # trl 0.7.11
    bnb_config, lora_config = reviewgpt.qlora_config("gemma")
    reviewgpt.offline_by_default()   # what the CLI does first: HF_HUB_OFFLINE=1 unless set

Heavy modules (torch, transformers) load only when a function that needs them is called, and
importing reviewgpt changes nothing in the process (no environment variable, no patch).
"""

from reviewgpt.data.prompt import INSTRUCTION, TEMPLATES, formatting_func, make_formatting_func
from reviewgpt.errors import UserError
from reviewgpt.models import qlora_config
from reviewgpt.offline import offline_by_default
from reviewgpt.recipe import Recipe, load_recipe

__version__ = "0.1.0"

__all__ = [
    "INSTRUCTION",
    "TEMPLATES",
    "Recipe",
    "UserError",
    "formatting_func",
    "load_recipe",
    "make_formatting_func",
    "offline_by_default",
    "qlora_config",
]
