"""The recipe as transformers' TrainingArguments (the pinned 4.38.2's fields), and the checks that
say what is missing before the Trainer fails on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe
from reviewgpt.torch_support import dataloader_prefetch_factor
from reviewgpt.train.distributed import accumulation_per_process, single_gpu_guard, world_size

log = logging.getLogger(__name__)


def _optimizer_for_device(recipe: Recipe, cuda: bool) -> str:
    if not cuda and ("paged" in recipe.optim or "bnb" in recipe.optim or "8bit" in recipe.optim):
        log.warning("optimizer %r needs bitsandbytes on a GPU; using adamw_torch on this CPU", recipe.optim)
        return "adamw_torch"
    return recipe.optim


# The package each `report_to` integration needs, when it is not its own name.
REPORT_TO_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "azure_ml": ("azureml",),
                      "codecarbon": ("codecarbon",), "flyte": ("flytekit",)}


def check_report_to(report_to) -> None:
    """Say which package a `--report-to` integration needs before the Trainer fails on it."""
    import importlib.util

    for name in report_to:
        if name == "none":
            continue
        packages = REPORT_TO_PACKAGES.get(name, (name,))
        if not any(importlib.util.find_spec(p) for p in packages):
            raise UserError(f"--report-to {name} needs the {packages[0]} package, which is not installed: "
                            f"pip install {packages[0]}, or pass --report-to none.")


def training_arguments(recipe: Recipe, output_dir: Path, do_eval: bool, cuda: bool,
                       deepspeed_config: Optional[str] = None):
    """The Trainer's arguments for `recipe`; `deepspeed_config`: a DeepSpeed JSON (processes that
    `reviewgpt train --deepspeed` launched), None without DeepSpeed."""
    from transformers import TrainingArguments

    bf16 = recipe.bf16 and cuda
    if recipe.bf16 and not cuda:
        log.warning("no CUDA GPU: training in fp32 instead of bf16")
    processes = world_size()
    accumulation = accumulation_per_process(recipe.per_device_train_batch_size,
                                            recipe.gradient_accumulation_steps, processes)
    if processes > 1:
        log.info("%d processes: accumulation %d per process keeps the effective batch of %d",
                 processes, accumulation, recipe.effective_batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=recipe.learning_rate,
        max_grad_norm=recipe.max_grad_norm,
        weight_decay=recipe.weight_decay,
        optim=_optimizer_for_device(recipe, cuda),
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_ratio=recipe.warmup_ratio,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=recipe.gradient_checkpointing,
        # transformers 4.38.2 calls checkpointing without use_reentrant; torch warns (later raises).
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        evaluation_strategy="steps" if do_eval else "no",
        # The best checkpoint by held-out loss is tracked (and never rotated away): train.best.
        metric_for_best_model="eval_loss" if do_eval else None,
        greater_is_better=False if do_eval else None,
        eval_steps=recipe.eval_steps if do_eval else None,
        seed=recipe.seed,
        data_seed=recipe.seed,
        ddp_timeout=recipe.ddp_timeout,
        remove_unused_columns=False,
        report_to=[] if "none" in recipe.report_to else list(recipe.report_to),
        save_safetensors=True,
        disable_tqdm=False,
        use_cpu=not cuda,
        deepspeed=deepspeed_config,
        # Every LoRA weight gets a gradient; the unused-parameter search only costs time under DDP.
        ddp_find_unused_parameters=False if processes > 1 else None,
    )
    # transformers 4.38.2 hands DataLoader prefetch_factor=None, which torch 1.x refuses; its own check
    # forbids 2 without workers, so the torch's accepted value is set after it (reviewgpt.torch_support).
    args.dataloader_prefetch_factor = dataloader_prefetch_factor()
    single_gpu_guard(args)
    return args
