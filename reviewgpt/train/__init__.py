"""Train: records -> tokenized examples -> trl SFTTrainer (QLoRA) -> adapter in a run folder.

    loop.py         `reviewgpt train`: the orchestration (recipe -> model -> trainer -> run folder)
    oom.py          CUDA out-of-memory recovery: retry from the newest checkpoint with less memory
    plan.py         `reviewgpt plan`: predicted peak memory before anything loads
    bench.py        `reviewgpt bench`: tokens/s and peak memory per speed option
    distributed.py  several GPUs: accelerate launch, DeepSpeed ZeRO-2 config
    speed/          the recipe's speed options as scoped patches of transformers/peft

Reads data (reviewgpt.data) and models (reviewgpt.models); eval never imports this package.
`from reviewgpt.train import train` (the function, as before issue 14) still works: names are
looked up lazily so importing the package does not import torch.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it (the names old `reviewgpt.train` had)
_EXPORTS = {
    "train": "loop",
    "RECIPE_FILE": "loop",
    "LOG_FILE": "loop",
    "TokenizedSplit": "loop",
    "tokenize_records": "loop",
    "ListDataset": "loop",
    "PadCollator": "loop",
    "is_complete_checkpoint": "loop",
    "newest_complete_checkpoint": "loop",
    "trusted_checkpoint_loading": "loop",
    "make_log_callback": "loop",
    "drop_empty_param_groups": "loop",
    "peak_memory_per_gpu": "loop",
    "logged_loss_sum": "loop",
    "run_mean_loss": "loop",
    "resume_batch": "loop",
    "local_paths_absolute": "loop",
    "plot_loss_curve": "loop",
    "check_report_to": "loop",
    "training_arguments": "loop",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
