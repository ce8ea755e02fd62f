"""Resuming a run: which checkpoint, at which micro-batch, with which loss.

Re-running the same command after a crash resumes from the newest *complete* checkpoint
(transformers' own `get_last_checkpoint` only looks at folder names, so a checkpoint cut short
mid-save would be picked). On torch >= 2.6 transformers 4.38.2's resume `torch.load`s the RNG
state without `weights_only=False` and fails; `trusted_checkpoint_loading` passes it for files
inside the run's own checkpoint folder only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import List, Optional

import torch

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint the Trainer finished writing: weights, optimizer, scheduler, state and the
    RNG state, which transformers 4.38.2 writes last."""
    has_weights = any((path / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin",
                                                      "model.safetensors", "pytorch_model.bin"))
    has_rng = any(path.glob("rng_state*.pth"))
    return (has_weights and has_rng and (path / "trainer_state.json").is_file()
            and (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file())


def newest_complete_checkpoint(output_dir) -> Optional[Path]:
    candidates = []
    for child in Path(output_dir).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            if is_complete_checkpoint(child):
                candidates.append((int(m.group(1)), child))
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


def run_mean_loss(training_loss: float, global_step: int, checkpoint: Optional[Path]) -> Optional[float]:
    """The mean training loss over all the run's steps.

    transformers 4.38.2 divides the losses summed *since the resume* by every step of the run, so a
    resumed run reported 2.52 where the uninterrupted one reported 6.32: add the losses of the steps
    before the checkpoint back from its log history."""
    if math.isnan(training_loss) or not global_step:
        return None
    if checkpoint is None:
        return training_loss
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    before = logged_loss_sum(state.get("log_history", []), state["global_step"])
    return (before + training_loss * global_step) / global_step


def resume_batch(checkpoint: Path, recipe: Recipe, train_batch_size: int, write: bool = True) -> None:
    """Resume at this run's micro-batch when the effective batch is unchanged; refuse otherwise.

    transformers 4.38.2 resumes with the checkpoint's micro-batch (`train_batch_size` in
    trainer_state.json, kept for auto_find_batch_size): a rerun at 2 x 2 after a crash at 4 x 2
    trained at 4 x 2 and would run out of memory again. The sampler's order does not depend on the
    micro-batch, so with the same effective batch each optimizer step sees the same samples and the
    skipped ones are exactly those already trained on; with another effective batch the resume
    would skip the wrong number of samples."""
    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    saved_path = checkpoint.parent / run.RECIPE_FILE
    micro, accumulation = recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps
    if saved_path.is_file():
        saved = run.read_recipe(checkpoint.parent)
        old_micro, old_accumulation = saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"]
        old = old_micro * old_accumulation
        if old != recipe.effective_batch_size:
            fix = (f"--gradient-accumulation-steps {old // micro}" if old % micro == 0 else
                   f"--per-device-train-batch-size {old_micro} --gradient-accumulation-steps {old_accumulation}")
            raise UserError(
                f"{checkpoint} was trained at an effective batch of {old} ({old_micro} x {old_accumulation} "
                f"accumulation) and this run asks for {recipe.effective_batch_size} ({micro} x {accumulation}), so "
                f"the resume would skip the wrong samples; pass {fix} to keep the effective batch, or train into "
                "a new --output.")
    if state.get("train_batch_size") in (None, train_batch_size):
        return
    if not saved_path.is_file():
        raise UserError(
            f"{checkpoint} was trained at micro-batch {state['train_batch_size']} and {saved_path} is missing, so "
            f"its effective batch is unknown; pass --per-device-train-batch-size {state['train_batch_size']} to "
            "resume it, or train into a new --output.")
    log.info("resuming %s at micro-batch %d x %d accumulation (it was trained at %d x %d; same effective batch)",
             checkpoint, micro, accumulation, old_micro, old_accumulation)
    state["train_batch_size"] = train_batch_size
    if write:  # every process checks; one writes
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
