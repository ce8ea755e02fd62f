"""`reviewgpt train`: records -> tokenized examples (review kept whole) -> trl SFTTrainer (QLoRA)
-> adapter and run folder. This module is the orchestration only; each step is its own module:

    dataset.py    tokenize loop, the run's sample order, torch Dataset, pad collator
    resume.py     same run?, newest complete checkpoint, resume micro-batch, run-wide mean loss
    logs.py       JSONL log callback, loss curve, peak memory
    arguments.py  recipe -> TrainingArguments
    distributed.py  processes, DeepSpeed's optimizer fix
    oom.py        CUDA OOM recovery (around each training attempt)
    run_files.py  what the run writes into its folder before the first step and at the end
    speed/        the recipe's speed options, applied for the duration of the run and undone after it

Running the same command again is always safe. The run folder must be empty, absent or a reviewgpt
run, and a run trained with other settings or data is refused (resume.check_same_run) before
anything is written. A finished run says so and changes nothing; a larger --max-steps or
--num-train-epochs continues it. Otherwise the run resumes from its newest complete checkpoint. The
last step always saves a checkpoint, and the run's final files (adapter, tokenizer, loss curve,
train_summary.json last) are made from it (run_files.finish_run): a run killed while writing them
finishes from that checkpoint without training again.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from reviewgpt import run
from reviewgpt.data.records import load_records, records_digest, split_by_paper
from reviewgpt.data.tokenization import PromptEncoder
from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe
from reviewgpt.train.arguments import check_report_to, training_arguments
from reviewgpt.train.best import make_best_callback, stopped_early
from reviewgpt.train.checks import check_job
from reviewgpt.train.dataset import (
    ListDataset,
    PadCollator,
    TokenizedSplit,
    in_order,
    planned_steps,
    run_order,
    tokenize_records,
)
from reviewgpt.train.distributed import (
    ddp_skip_constant_buffers,
    drop_empty_param_groups,
    is_main_process,
    world_size,
)
from reviewgpt.train.logs import TrainedTokens, logs_to_stderr, make_log_callback
from reviewgpt.train.oom import with_oom_recovery
from reviewgpt.train.resume import (
    check_same_run,
    checkpoint_state,
    is_complete_checkpoint,
    newest_complete_checkpoint,
    resume_batch,
    run_identity,
    run_mean_loss,
    saved_identity,
    trusted_checkpoint_loading,
)
from reviewgpt.train.run_files import final_checkpoint, finish_run, write_run_files

log = logging.getLogger(__name__)


def local_paths_absolute(recipe: Recipe) -> Recipe:
    """The base model and tokenizer as absolute paths when they are local folders: the run folder
    records them (adapter_config.json, reviewgpt_recipe.yaml) and `merge` or `review` may run from
    another directory. Hub ids stay as they are."""
    changes = {name: str(Path(value).resolve()) for name, value in
               (("model", recipe.model), ("tokenizer", recipe.tokenizer)) if value and Path(value).is_dir()}
    return recipe.replace(**changes) if changes else recipe


def refuse_foreign_folder(output_dir: Path) -> None:
    """--output must be absent, empty or a reviewgpt run: never write over someone else's files."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {output_dir} is a file; pass a folder for the run.")
    foreign = run.foreign_file(output_dir)
    if foreign is not None:
        raise UserError(f"--output {output_dir} holds {foreign.name}, which no reviewgpt run writes; pass an empty "
                        "or new folder (or the folder of the run to resume).")


@dataclass(frozen=True)
class Prepared:
    """What every attempt of one run reads, made once by `train`: the records tokenized, what defines the
    run, and the counts its summary reports."""

    output_dir: Path
    identity: dict
    rejected: list
    tokenizer: object
    train_split: TokenizedSplit
    eval_split: Optional[TokenizedSplit]
    max_steps: int
    do_eval: bool
    counts: dict
    callbacks: Sequence
    deepspeed_config: Optional[str]


def train(recipe: Recipe, data_path, output_dir, *, resume_from=None, do_eval: bool = False,
          skip_invalid: bool = False, callbacks: Sequence = (), deepspeed_config: Optional[str] = None) -> dict:
    """Run one training job; returns a summary (also written to OUTPUT/train_summary.json).

    The records are read, checked and tokenized once, and `checkpoint_skip_layers: auto` becomes the
    number of layers the GPU holds at the longest example; then the training runs, again from the newest
    checkpoint with less memory after a CUDA out-of-memory (train.oom, recipe.oom_recovery).
    `deepspeed_config`: the DeepSpeed JSON of a process that `reviewgpt train --deepspeed` launched."""
    from reviewgpt.data.prompt import get_template
    from reviewgpt.models import load_tokenizer
    from reviewgpt.train.plan import with_planned_layers

    if not recipe.model:
        raise UserError(f"recipe {recipe.name!r} names no model; pass --model DIR.")
    recipe = local_paths_absolute(recipe)
    output_dir = Path(output_dir)
    refuse_foreign_folder(output_dir)

    loaded = load_records(data_path, skip_invalid=skip_invalid)
    if loaded.duplicates:
        log.info("%d exact duplicate record(s) removed", loaded.duplicates)
    train_records, eval_records = split_by_paper(loaded.records, recipe.eval_fraction if do_eval else 0.0,
                                                 recipe.seed)
    if not train_records:
        raise UserError(f"{data_path}: no valid records to train on.")

    # Is there a run here to resume, or one that is finished? Then it must be this run.
    identity = run_identity(recipe, records_digest(loaded.records), do_eval)
    checkpoint = _checkpoint_to_resume(resume_from, output_dir)
    finished = run.read_summary(output_dir)
    if checkpoint is not None or finished:
        where = output_dir if run.read_identity(output_dir) or checkpoint is None else checkpoint.parent
        check_same_run(where, saved_identity(where), identity, recipe,
                       run.read_recipe(where).get("per_device_train_batch_size"))
    check_job(recipe, train_records, eval_records, do_eval, data_path)  # length, batch, --eval: before loading

    tokenizer = load_tokenizer(recipe.tokenizer or recipe.model, recipe.family)
    encoder = PromptEncoder(tokenizer, get_template(recipe.template))
    train_split = tokenize_records(train_records, encoder, recipe, "tokenizing train")
    eval_split = tokenize_records(eval_records, encoder, recipe, "tokenizing eval") if eval_records else None
    if not train_split.examples:
        raise UserError(f"{data_path}: every review was too long for max_seq_length={recipe.max_seq_length}.")

    max_steps = planned_steps(len(train_split.examples), recipe)
    state = checkpoint_state(checkpoint) if checkpoint is not None else None
    reached = max(state["global_step"] if state else 0, finished.get("global_step", 0))
    if reached > max_steps:
        raise UserError(f"{output_dir} has trained {reached} steps and this command asks for {max_steps}; pass a "
                        "larger --max-steps or --num-train-epochs to continue it, or train into a new --output.")
    same_patience = finished.get("early_stopping_patience") == recipe.early_stopping_patience
    if finished.get("global_step") == max_steps or (finished.get("stopped_early") and same_patience):
        log.info("%s: this run is finished (step %d of %d, %s); nothing to do. A larger --max-steps or "
                 "--num-train-epochs continues it.", output_dir, finished["global_step"], max_steps,
                 run.SUMMARY_FILE)
        return finished

    # checkpoint_skip_layers auto: the most layers the GPU's free memory holds at the longest example,
    # decided here once; every attempt, its run files and OOM recovery read that number.
    recipe = with_planned_layers(recipe, train_split.max_tokens)
    counts = {
        "output": str(output_dir),
        "recipe": recipe.name,
        "train_records": len(train_split.examples),
        "eval_records": len(eval_split.examples) if eval_split else 0,
        "invalid": len(loaded.rejected),
        "duplicates": loaded.duplicates,
        "papers_truncated": train_split.papers_truncated + (eval_split.papers_truncated if eval_split else 0),
        "reviews_skipped": train_split.reviews_skipped + (eval_split.reviews_skipped if eval_split else 0),
        "max_tokens": train_split.max_tokens,
    }
    prepared = Prepared(output_dir, identity, loaded.rejected, tokenizer, train_split, eval_split, max_steps,
                        do_eval and eval_split is not None, counts, tuple(callbacks), deepspeed_config)
    return with_oom_recovery(functools.partial(train_from, prepared), recipe, output_dir, checkpoint)


def train_from(prepared: Prepared, recipe: Recipe, checkpoint: Optional[Path]) -> dict:
    """One attempt: train `recipe` (its kept layers a number) from `checkpoint` (None: from the start)
    to the end of the run and write the run's final files."""
    from transformers import set_seed
    from trl import SFTTrainer

    from reviewgpt.data.prompt import make_formatting_func
    from reviewgpt.models import load_base_model, qlora_config
    from reviewgpt.train.plan import check_fits
    from reviewgpt.train.speed import speedups

    output_dir, max_steps, do_eval, train_split = (prepared.output_dir, prepared.max_steps, prepared.do_eval,
                                                   prepared.train_split)
    cuda = torch.cuda.is_available()
    if cuda:  # refuse before loading what `reviewgpt plan` predicts will not fit (recipe.memory_check)
        check_fits(recipe, train_split.max_tokens)
    check_report_to(recipe.report_to)

    state = checkpoint_state(checkpoint) if checkpoint is not None else None
    main_process = is_main_process()  # under several processes only rank 0 writes files
    log_path = output_dir / run.LOG_FILE
    epochs_per_step = recipe.effective_batch_size / len(train_split.examples)
    summary = {**prepared.counts, "resumed_from": str(checkpoint) if checkpoint else None}
    if state is not None and (state["global_step"] == max_steps or (do_eval and stopped_early(
            state["log_history"], recipe.early_stopping_patience))):  # trained to the end, killed after
        log.info("resuming from %s: the training is done; writing the run's files", checkpoint)
        summary.update(stopped_early=state["global_step"] < max_steps,
                       early_stopping_patience=recipe.early_stopping_patience)
        return finish_run(output_dir, final_checkpoint(output_dir, state, do_eval, summary), summary, state,
                          None, 0.0, main_process)

    args = training_arguments(recipe, output_dir, do_eval, cuda, prepared.deepspeed_config)
    args.max_steps = max_steps
    if checkpoint is not None:
        log.info("resuming from %s (step %d of %d)", checkpoint, state["global_step"], max_steps)
        resume_batch(checkpoint, recipe, args.train_batch_size, write=main_process)
    # A full fine-tune keeps fp32 master weights (bf16 updates of ~1e-5 would round away) and computes in
    # bf16 under the Trainer's autocast; LoRA trains beside a frozen base held in bf16 (or 4-bit NF4).
    model = load_base_model(recipe.model, recipe.family, recipe.quantize, recipe.bf16 and cuda and recipe.lora,
                            recipe.attn_implementation)
    lora = None
    if recipe.lora:
        _, lora = qlora_config(recipe.family, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                               recipe.lora_target_modules, quantize=recipe.quantize)

    # SFTTrainer builds the LoRA layers (random A matrices) before the Trainer seeds anything:
    # seed first, or two runs of the same command start from different adapters.
    set_seed(recipe.seed)
    eval_split = prepared.eval_split
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(run_order(train_split.examples, max_steps, recipe.effective_batch_size,
                                            recipe.seed)),
        eval_dataset=ListDataset(eval_split.examples) if eval_split and args.do_eval else None,
        peft_config=lora,
        tokenizer=prepared.tokenizer,
        data_collator=PadCollator(prepared.tokenizer.pad_token_id),
        formatting_func=make_formatting_func(recipe.template),  # unused: the data is pre-tokenized
        max_seq_length=recipe.max_seq_length,
        packing=False,
        callbacks=[*([make_best_callback(recipe.early_stopping_patience)] if do_eval else []),
                   make_log_callback(log_path, lambda step: step * epochs_per_step), *prepared.callbacks],
    )
    in_order(trainer)
    logs_to_stderr(trainer)  # stdout holds only the JSON result
    write_run_files(output_dir, recipe, prepared.identity, prepared.rejected, state, main_process)
    drop_empty_param_groups(trainer)
    if world_size() > 1:
        ddp_skip_constant_buffers(trainer.model)  # torch 1.13's gloo cannot broadcast Gemma's bool mask
    started = time.time()
    # The speed options, in force for this run only: undone when it ends (or fails). TrainedTokens last:
    # it counts at the forward the speed options may have replaced (a full fine-tune's model is itself
    # the module chunked_loss patches).
    with speedups(trainer.model, recipe.speed, bf16=args.bf16, args=trainer.args), \
            TrainedTokens(trainer.model) as trained, trusted_checkpoint_loading(checkpoint):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trained_s = max(time.time() - started, 1e-9)  # the training itself: saving and plotting are not in tokens/s
    summary["train_loss"] = run_mean_loss(result.training_loss, trainer.state.global_step, state)
    summary.update(train_tokens=trained.tokens, tokens_per_s=round(trained.tokens / trained_s, 1))
    done = {"global_step": trainer.state.global_step, "log_history": trainer.state.log_history}
    summary.update(stopped_early=trainer.state.global_step < max_steps,
                   early_stopping_patience=recipe.early_stopping_patience)
    final = final_checkpoint(output_dir, done, do_eval, summary)
    return finish_run(output_dir, final, summary, None, trainer.state.global_step, trained_s, main_process)


def _checkpoint_to_resume(resume_from, output_dir: Path) -> Optional[Path]:
    if resume_from:
        checkpoint = Path(resume_from)
        if not (checkpoint.is_dir() and is_complete_checkpoint(checkpoint)):
            raise UserError(f"--resume-from {resume_from}: not a complete checkpoint folder.")
        return checkpoint
    return newest_complete_checkpoint(output_dir) if output_dir.is_dir() else None
