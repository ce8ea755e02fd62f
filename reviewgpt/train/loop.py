"""`reviewgpt train`: records -> tokenized examples (review kept whole) -> trl SFTTrainer (QLoRA)
-> adapter and run folder. This module is the orchestration only; each step is its own module:

    dataset.py    tokenize loop, torch Dataset, pad collator
    resume.py     newest complete checkpoint, resume micro-batch, run-wide mean loss, torch.load swap
    logs.py       JSONL log callback, loss curve, peak memory
    arguments.py  recipe -> TrainingArguments
    distributed.py  processes, DeepSpeed's optimizer fix
    oom.py        CUDA OOM recovery (wraps `train`)
    speed/        the recipe's speed options, applied for the duration of the run and undone after it
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from reviewgpt import run
from reviewgpt.data.records import load_records, split_by_paper, write_rejects
from reviewgpt.data.tokenization import PromptEncoder
from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe
from reviewgpt.train.arguments import check_report_to, training_arguments
from reviewgpt.train.checks import check_job
from reviewgpt.train.dataset import ListDataset, PadCollator, tokenize_records
from reviewgpt.train.distributed import (
    ddp_skip_constant_buffers,
    drop_empty_param_groups,
    is_main_process,
    world_size,
)
from reviewgpt.train.logs import TrainedTokens, logs_to_stderr, make_log_callback, peak_memory_per_gpu, plot_loss_curve
from reviewgpt.train.oom import with_oom_recovery
from reviewgpt.train.resume import (
    is_complete_checkpoint,
    newest_complete_checkpoint,
    resume_batch,
    run_mean_loss,
    trusted_checkpoint_loading,
)

log = logging.getLogger(__name__)

# Kept for code that read them here before reviewgpt.run held the run folder's format.
RECIPE_FILE = run.RECIPE_FILE
LOG_FILE = run.LOG_FILE


def local_paths_absolute(recipe: Recipe) -> Recipe:
    """The base model and tokenizer as absolute paths when they are local folders: the run folder
    records them (adapter_config.json, reviewgpt_recipe.yaml) and `merge` or `review` may run from
    another directory. Hub ids stay as they are."""
    changes = {name: str(Path(value).resolve()) for name, value in
               (("model", recipe.model), ("tokenizer", recipe.tokenizer)) if value and Path(value).is_dir()}
    return recipe.replace(**changes) if changes else recipe


@with_oom_recovery  # issue 4: a CUDA OOM halves the micro-batch and resumes (recipe.oom_recovery)
def train(recipe: Recipe, data_path, output_dir, *, resume_from=None, do_eval: bool = False,
          skip_invalid: bool = False, callbacks: Sequence = ()) -> dict:
    """Run one training job; returns a summary (also written to OUTPUT/train_summary.json)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from reviewgpt.data.prompt import get_template, make_formatting_func
    from reviewgpt.models import load_base_model, load_tokenizer, qlora_config
    from reviewgpt.train.plan import check_fits, with_planned_layers
    from reviewgpt.train.speed import speedups

    if not recipe.model:
        raise UserError(f"recipe {recipe.name!r} names no model; pass --model DIR.")
    recipe = local_paths_absolute(recipe)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()

    loaded = load_records(data_path, skip_invalid=skip_invalid)
    if loaded.rejected and is_main_process():
        write_rejects(loaded.rejected, output_dir / run.REJECTS_FILE)
        log.warning("%d invalid record(s) set aside in %s", len(loaded.rejected), output_dir / run.REJECTS_FILE)
    if loaded.duplicates:
        log.info("%d exact duplicate record(s) removed", loaded.duplicates)
    train_records, eval_records = split_by_paper(loaded.records, recipe.eval_fraction if do_eval else 0.0,
                                                 recipe.seed)
    if not train_records:
        raise UserError(f"{data_path}: no valid records to train on.")
    check_job(recipe, train_records, eval_records, do_eval, data_path)  # length, batch, --eval: before loading

    tokenizer = load_tokenizer(recipe.tokenizer or recipe.model, recipe.family)
    encoder = PromptEncoder(tokenizer, get_template(recipe.template))
    train_split = tokenize_records(train_records, encoder, recipe, "tokenizing train")
    eval_split = tokenize_records(eval_records, encoder, recipe, "tokenizing eval") if eval_records else None
    if not train_split.examples:
        raise UserError(f"{data_path}: every review was too long for max_seq_length={recipe.max_seq_length}.")

    # checkpoint_skip_layers auto: the most layers the GPU's free memory holds at the longest example
    step_recipe = with_planned_layers(recipe, train_split.max_tokens)
    if cuda:  # refuse before loading what `reviewgpt plan` predicts will not fit (recipe.memory_check)
        check_fits(step_recipe, train_split.max_tokens)
    check_report_to(recipe.report_to)
    args = training_arguments(recipe, output_dir, do_eval and eval_split is not None, cuda)

    checkpoint = Path(resume_from) if resume_from else newest_complete_checkpoint(output_dir)
    if resume_from and not (checkpoint.is_dir() and is_complete_checkpoint(checkpoint)):
        raise UserError(f"--resume-from {resume_from}: not a complete checkpoint folder.")
    log_path = output_dir / run.LOG_FILE
    main_process = is_main_process()  # under several processes only rank 0 writes files
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        log.info("resuming from %s (step %d)", checkpoint, state["global_step"])
        resume_batch(checkpoint, recipe, args.train_batch_size, write=main_process)
        if main_process:
            run.truncate_log(log_path, state["global_step"])
    elif main_process:
        log_path.unlink(missing_ok=True)
    if main_process:
        run.write_recipe(recipe, output_dir)
    model = load_base_model(recipe.model, recipe.family, recipe.quantize, recipe.bf16 and cuda,
                            recipe.attn_implementation)
    _, lora = qlora_config(recipe.family, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                           recipe.lora_target_modules, quantize=recipe.quantize)

    # SFTTrainer builds the LoRA layers (random A matrices) before the Trainer seeds anything:
    # seed first, or two runs of the same command start from different adapters.
    set_seed(recipe.seed)
    collator = PadCollator(tokenizer.pad_token_id)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(train_split.examples),
        eval_dataset=ListDataset(eval_split.examples) if eval_split and args.do_eval else None,
        peft_config=lora,
        tokenizer=tokenizer,
        data_collator=collator,
        formatting_func=make_formatting_func(recipe.template),  # unused: the data is pre-tokenized
        max_seq_length=recipe.max_seq_length,
        packing=False,
        callbacks=[make_log_callback(log_path), *callbacks],
    )
    logs_to_stderr(trainer)  # stdout holds only the JSON result
    drop_empty_param_groups(trainer)
    if world_size() > 1:
        ddp_skip_constant_buffers(trainer.model)  # torch 1.13's gloo cannot broadcast Gemma's bool mask
    started = time.time()
    # issue 4's speed options, in force for this run only: undone when it ends (or fails)
    with TrainedTokens(trainer.model) as trained, speedups(trainer, step_recipe, bf16=args.bf16), \
            trusted_checkpoint_loading(checkpoint):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trained_s = max(time.time() - started, 1e-9)  # the training itself: saving and plotting are not in tokens/s
    trainer.save_model(str(output_dir))  # the adapter (+ adapter_config naming the base model); rank 0 only
    png = None
    if main_process:
        tokenizer.save_pretrained(str(output_dir))
        png = plot_loss_curve(log_path, output_dir / run.LOSS_CURVE_FILE)
    summary = {
        "output": str(output_dir),
        "recipe": recipe.name,
        "train_records": len(train_split.examples),
        "eval_records": len(eval_split.examples) if eval_split else 0,
        "invalid": len(loaded.rejected),
        "duplicates": loaded.duplicates,
        "papers_truncated": train_split.papers_truncated + (eval_split.papers_truncated if eval_split else 0),
        "reviews_skipped": train_split.reviews_skipped + (eval_split.reviews_skipped if eval_split else 0),
        "max_tokens": train_split.max_tokens,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "global_step": trainer.state.global_step,
        "train_loss": run_mean_loss(result.training_loss, trainer.state.global_step, checkpoint),
        "seconds": round(trained_s, 1),
        # Tokens this process trained on (not eval batches) over the training's wall time.
        "train_tokens": trained.tokens,
        "tokens_per_s": round(trained.tokens / trained_s, 1),
        "loss_curve": str(png) if png else None,
        "world_size": world_size(),
        "peak_allocated_gib_per_gpu": peak_memory_per_gpu(),
    }
    if main_process:
        run.write_summary(output_dir, summary)
    return summary
