"""OOM self-recovery for `train`: halve the micro-batch, double grad accumulation, resume.

The reference Mistral run died of out-of-memory at 4 a.m. and was restarted by hand at batch 2
from its last checkpoint. Here a CUDA out-of-memory inside `train` frees the
GPU (drops the trainer and model, clears the traceback's frames, empties the cache), halves
`per_device_train_batch_size`, multiplies `gradient_accumulation_steps` so the effective batch
stays exactly the same, and trains again from the newest complete checkpoint. Each recovery
is logged and appended to OUTPUT/oom_recovery.jsonl. At micro-batch 1 it stops with a clear message.
When the recipe keeps layers from recompute (`checkpoint_skip_layers`), the first recovery gives
those up instead (every layer recomputed again, same batch): that memory was bought for speed only.
Under several processes (DDP, ZeRO-2) it stops every process with the command to rerun instead:
one rank cannot change its batch while the others wait in a collective.

"Halves" means the largest micro-batch at most half the current one that divides the effective
batch (per process), so the effective batch never changes (5 x 3 -> 1 x 15, not 2 x 8) and a
resume skips exactly the samples already trained on. transformers 4.38.2 resumes with the
*checkpoint's* micro-batch; `train` makes it use the new one (see `reviewgpt.train.resume.resume_batch`).
"""

from __future__ import annotations

import gc
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from reviewgpt import run
from reviewgpt.errors import UserError
from reviewgpt.files import append_line
from reviewgpt.train.distributed import world_size

log = logging.getLogger(__name__)


def is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)  # torch >= 1.13
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def free_gpu(exc: BaseException) -> None:
    """Release what the failed attempt's frames still hold (trainer, model, activations)."""
    import torch

    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    exc.__traceback__ = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def smaller_batch(recipe, processes: int = 1):
    """At most half the micro-batch, with the effective batch kept exactly: the largest micro-batch
    <= micro // 2 that divides each process's share of the effective batch; accumulation makes up
    the rest (5 x 3 -> 1 x 15, 6 x 2 -> 3 x 4). None at micro-batch 1."""
    effective = recipe.effective_batch_size
    share = effective // processes if effective % processes == 0 else effective
    for micro in range(recipe.per_device_train_batch_size // 2, 0, -1):
        if share % micro == 0:
            return recipe.replace(per_device_train_batch_size=micro, gradient_accumulation_steps=effective // micro)
    return None


def smaller_footprint(recipe, processes: int = 1):
    """The next configuration to try after an OOM, and what changed (None at the end of the road)."""
    if recipe.speed.kept_layers:
        return recipe.with_speed(checkpoint_skip_layers=0), "every layer recomputed (checkpoint_skip_layers 0)"
    smaller = smaller_batch(recipe, processes)
    if smaller is not None:
        return smaller, (f"micro-batch {smaller.per_device_train_batch_size} x "
                         f"{smaller.gradient_accumulation_steps} accumulation")
    return None, None


def with_oom_recovery(attempt: Callable, recipe, output_dir, checkpoint: Optional[Path] = None) -> dict:
    """`attempt(recipe, checkpoint)` (one training attempt from `checkpoint`, None: from the start), again
    from the newest complete checkpoint with a smaller footprint after each CUDA out-of-memory, while
    recipe.oom_recovery is on. The recipe's kept layers are a number (auto was resolved before)."""
    recipe.speed.kept_layers  # noqa: B018 - refuses an unresolved `auto` before the first attempt
    while True:
        try:
            return attempt(recipe, checkpoint)
        except Exception as exc:  # noqa: BLE001 - only CUDA OOM is handled, the rest re-raised
            if not (recipe.oom_recovery and is_cuda_oom(exc)):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            free_gpu(exc)
        processes = world_size()
        smaller, change = smaller_footprint(recipe, processes)
        if processes > 1:
            # One rank cannot shrink its batch and resume while the others wait inside a
            # collective: stop every process (the launcher ends the rest) and say what to rerun.
            smaller = smaller or recipe
            flags = (f"--per-device-train-batch-size {smaller.per_device_train_batch_size} "
                     f"--gradient-accumulation-steps {smaller.gradient_accumulation_steps}")
            if recipe.speed.kept_layers:
                flags += f" --checkpoint-skip-layers {smaller.speed.kept_layers}"
            raise UserError(
                f"out of GPU memory under {processes} processes ({message}); rerun the same command with "
                f"{flags}: it resumes from the newest complete checkpoint.")
        if smaller is None:
            raise UserError(
                f"out of GPU memory at micro-batch 1 ({message}); nothing left to halve: use a shorter "
                "--max-seq-length, keep the speed options on (see `reviewgpt plan`), or a larger GPU.")
        from reviewgpt.train.resume import newest_complete_checkpoint

        checkpoint = newest_complete_checkpoint(output_dir)  # resumed at the new micro-batch
        event = {"time": round(time.time(), 3), "error": message,
                 "from": [recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps],
                 "to": [smaller.per_device_train_batch_size, smaller.gradient_accumulation_steps],
                 "checkpoint_skip_layers": [recipe.speed.kept_layers, smaller.speed.kept_layers],
                 "resume_from": str(checkpoint) if checkpoint else None}
        log.warning("CUDA out of memory at micro-batch %d x %d; retrying with %s from %s",
                    *event["from"], change, event["resume_from"] or "the start")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        append_line(Path(output_dir) / run.OOM_EVENTS_FILE, json.dumps(event))
        recipe = smaller
