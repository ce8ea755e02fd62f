"""Resuming a run: is it the same run, from which checkpoint, at which micro-batch, with which loss.

Re-running the same command after a crash resumes from the newest *complete* checkpoint
(transformers' own `get_last_checkpoint` only looks at folder names, so a checkpoint cut short
mid-save would be picked). On torch >= 2.6 transformers 4.38.2's resume `torch.load`s the RNG
state without `weights_only=False` and fails; `trusted_checkpoint_loading` passes it for files
inside the run's own checkpoint folder only.

What defines a run (`run_identity`: the data's digest, the eval split, the recipe less what a
resume may change: the micro-batch split of the same effective batch, how often it saves and logs,
the speed and memory options, how long it runs) is recorded in the run folder; `check_same_run`
refuses a resume that differs, in one sentence naming the fields, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import List, Optional

import torch

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.files import atomic_write_json
from reviewgpt.recipe import Recipe

log = logging.getLogger(__name__)


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint the Trainer finished writing: weights, optimizer, scheduler, state and the
    RNG state, which transformers 4.38.2 writes last."""
    has_weights = any((path / n).is_file() for n in run.CHECKPOINT_WEIGHTS)
    has_rng = any(path.glob(run.RNG_STATE_GLOB))
    return has_weights and has_rng and all((path / n).is_file() for n in run.CHECKPOINT_STATE_FILES)


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's trainer state (global_step, log_history, ...)."""
    return json.loads((Path(path) / run.TRAINER_STATE_FILE).read_text())


def remove_partial_checkpoints(output_dir) -> List[Path]:
    """Remove what a killed save left: `tmp-checkpoint-N` folders (transformers 4.38.2 writes a
    checkpoint there and renames it when complete) and `checkpoint-N` folders that are not complete.
    The Trainer would otherwise write its next checkpoint of that step into the leftover."""
    import shutil

    removed = []
    for child in sorted(Path(output_dir).glob("*" + run.CHECKPOINT_GLOB)):
        partial = child.name.startswith(run.CHECKPOINT_PREFIXES[1]) or (run.checkpoint_step(child) is not None
                                                                         and not is_complete_checkpoint(child))
        if child.is_dir() and partial:
            shutil.rmtree(child)
            removed.append(child)
    return removed


def newest_complete_checkpoint(output_dir) -> Optional[Path]:
    candidates = []
    for child in Path(output_dir).glob(run.CHECKPOINT_GLOB):
        step = run.checkpoint_step(child)
        if step is not None and child.is_dir():
            if is_complete_checkpoint(child):
                candidates.append((step, child))
            else:
                log.warning("ignoring incomplete checkpoint %s (cut short while saving?)", child)
    return max(candidates)[1] if candidates else None


@contextlib.contextmanager
def trusted_checkpoint_loading(checkpoint: Optional[Path]):
    """Let transformers 4.38.2 load the run's own RNG/optimizer files on torch >= 2.6."""
    if checkpoint is None:
        yield
        return
    original = torch.load
    root = Path(checkpoint).resolve()

    def load(f, *args, **kwargs):
        if "weights_only" not in kwargs and isinstance(f, (str, os.PathLike)):
            p = Path(f).resolve()
            if p == root or root in p.parents:
                kwargs["weights_only"] = False  # our own checkpoint, written by this run
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def logged_loss_sum(log_history: List[dict], step: int) -> float:
    """The sum of the per-step training losses of steps 1..`step`, from a Trainer's log history.

    Each logged loss is the mean over the steps since the previous log; the callback above logs at
    every checkpoint, so the intervals reach `step` exactly (for older checkpoints the last logged
    mean stands in for the steps after it)."""
    total, previous = 0.0, 0
    for row in log_history:
        if "loss" in row and previous < row["step"] <= step:
            total += row["loss"] * (row["step"] - previous)
            previous = row["step"]
    if 0 < previous < step:
        total *= step / previous
    return total


def run_mean_loss(training_loss: float, global_step: int, resumed_state: Optional[dict]) -> Optional[float]:
    """The mean training loss over all the run's steps.

    transformers 4.38.2 divides the losses summed *since the resume* by every step of the run, so a
    resumed run reported 2.52 where the uninterrupted one reported 6.32: add the losses of the steps
    before the checkpoint back from its log history. `resumed_state` is the checkpoint's
    trainer_state.json as read when the run resumed: by the end `save_total_limit` may have deleted
    that checkpoint."""
    if math.isnan(training_loss) or not global_step:
        return None
    if resumed_state is None:
        return training_loss
    before = logged_loss_sum(resumed_state.get("log_history", []), resumed_state["global_step"])
    return (before + training_loss * global_step) / global_step


def logged_mean_loss(state: dict) -> Optional[float]:
    """The mean training loss over all steps up to a checkpoint, from its log history."""
    step = state.get("global_step", 0)
    return logged_loss_sum(state.get("log_history", []), step) / step if step else None


# Recipe fields a resume may change: how the same steps are computed, saved and logged, how long the
# run goes on, and what generation reads later; not which samples it trains on nor how. The micro-batch
# split may change when the effective batch stays (`effective_batch_size` is part of the identity).
MAY_CHANGE_ON_RESUME = (
    "name", "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
    "num_train_epochs", "max_steps", "save_steps", "save_total_limit", "logging_steps", "ddp_timeout",
    "review_max_input_tokens", "max_new_tokens", "speed", "memory_check", "oom_recovery", "report_to",
    "attn_implementation", "gradient_checkpointing", "early_stopping_patience", "generation",
)


def run_identity(recipe: Recipe, data_digest: str, do_eval: bool) -> dict:
    """What defines a run: a resume must match it (`check_same_run`)."""
    fields = {k: v for k, v in recipe.to_dict().items() if k not in MAY_CHANGE_ON_RESUME}
    return {"data_digest": data_digest, "eval": do_eval, "effective_batch_size": recipe.effective_batch_size,
            "recipe": fields}


def _differences(saved: dict, current: dict) -> List[str]:
    changed = []
    if saved.get("data_digest") not in (None, current["data_digest"]):
        changed.append("--data (other records: another file, or the file changed)")
    if saved.get("eval", current["eval"]) != current["eval"]:
        changed.append(f"--eval (the run was trained {'with' if saved['eval'] else 'without'} it)")
    old, new = saved.get("recipe", {}), current["recipe"]
    for name in new:
        if name in old and old[name] != new[name]:
            changed.append(f"{name} ({old[name]!r} in the run, {new[name]!r} now)")
    return changed


def check_same_run(run_dir, saved: dict, current: dict, recipe: Recipe, old_micro: Optional[int] = None) -> None:
    """Refuse to resume (or to call finished) a run folder that another run wrote, naming the fields."""
    old_batch = saved.get("effective_batch_size")
    if old_batch is not None and old_batch != current["effective_batch_size"]:
        micro, accumulation = recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps
        old_micro = old_micro if old_micro and old_batch % old_micro == 0 else old_batch
        fix = (f"--gradient-accumulation-steps {old_batch // micro}" if old_batch % micro == 0 else
               f"--per-device-train-batch-size {old_micro} --gradient-accumulation-steps {old_batch // old_micro}")
        raise UserError(
            f"{run_dir} was trained at an effective batch of {old_batch} ({old_micro} x {old_batch // old_micro} "
            f"accumulation) and this run asks for {recipe.effective_batch_size} ({micro} x {accumulation}), so "
            f"the resume would skip the wrong samples; pass {fix} to keep the effective batch, or train into "
            "a new --output.")
    changed = _differences(saved, current)
    if changed:
        raise UserError(f"{run_dir} holds a run trained with other settings: {'; '.join(changed)}; rerun with the "
                        "run's own values to resume it, or train into a new --output.")


def saved_identity(run_dir) -> dict:
    """The run folder's identity; for a run of an older reviewgpt (no reviewgpt_run.json) what its
    recipe file says (no data digest: the data cannot be checked)."""
    identity = run.read_identity(run_dir)
    if identity:
        return identity
    recipe = run.read_recipe(run_dir)
    if not recipe:
        return {}
    log.warning("%s records no data digest (an older reviewgpt): resuming without checking the data", run_dir)
    batch = recipe.get("per_device_train_batch_size", 1) * recipe.get("gradient_accumulation_steps", 1)
    return {"effective_batch_size": batch,
            "recipe": {k: v for k, v in recipe.items() if k not in MAY_CHANGE_ON_RESUME}}


def resume_batch(checkpoint: Path, recipe: Recipe, train_batch_size: int, write: bool = True) -> None:
    """Resume at this run's micro-batch (the effective batch is the same: `check_same_run`).

    transformers 4.38.2 resumes with the checkpoint's micro-batch (`train_batch_size` in
    trainer_state.json, kept for auto_find_batch_size): a rerun at 2 x 2 after a crash at 4 x 2
    trained at 4 x 2 and would run out of memory again. The run's sample order does not depend on
    the micro-batch (train.dataset.run_order), so with the same effective batch each optimizer step
    sees the same samples and the skipped ones are exactly those already trained on."""
    state_path = checkpoint / run.TRAINER_STATE_FILE
    state = json.loads(state_path.read_text())
    saved_path = checkpoint.parent / run.RECIPE_FILE
    micro, accumulation = recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps
    if state.get("train_batch_size") in (None, train_batch_size):
        return
    if not saved_path.is_file():
        raise UserError(
            f"{checkpoint} was trained at micro-batch {state['train_batch_size']} and {saved_path} is missing, so "
            f"its effective batch is unknown; pass --per-device-train-batch-size {state['train_batch_size']} to "
            "resume it, or train into a new --output.")
    log.info("resuming %s at micro-batch %d x %d accumulation (it was trained at micro-batch %d; same effective "
             "batch)", checkpoint, micro, accumulation, state["train_batch_size"])
    state["train_batch_size"] = train_batch_size
    if write:  # every process checks; one writes
        atomic_write_json(state_path, state)
