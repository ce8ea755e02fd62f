"""Train: records -> tokenized examples -> trl SFTTrainer (QLoRA) -> adapter in a run folder.

    loop.py         `reviewgpt train`: the orchestration (recipe -> model -> trainer -> run folder)
    dataset.py      tokenize loop, torch Dataset, pad collator
    resume.py       checkpoint scan, resume micro-batch and loss, trusted torch.load
    logs.py         JSONL log callback, loss curve, peak memory
    arguments.py    recipe -> TrainingArguments
    oom.py          CUDA out-of-memory recovery: retry from the newest checkpoint with less memory
    plan.py         `reviewgpt plan`: which micro-batch and kept layers fit (reviewgpt.memory predicts)
    bench.py        `reviewgpt bench`: tokens/s and peak memory per speed option
                    (bench_models.py: the models it measures; bench_timing.py: step timer, profiler)
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
    "local_paths_absolute": "loop",
    "TokenizedSplit": "dataset",
    "tokenize_records": "dataset",
    "ListDataset": "dataset",
    "PadCollator": "dataset",
    "is_complete_checkpoint": "resume",
    "newest_complete_checkpoint": "resume",
    "trusted_checkpoint_loading": "resume",
    "logged_loss_sum": "resume",
    "run_mean_loss": "resume",
    "run_identity": "resume",
    "check_same_run": "resume",
    "resume_batch": "resume",
    "make_log_callback": "logs",
    "TrainedTokens": "logs",
    "peak_memory_per_gpu": "logs",
    "plot_loss_curve": "logs",
    "check_report_to": "arguments",
    "training_arguments": "arguments",
    "drop_empty_param_groups": "distributed",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
