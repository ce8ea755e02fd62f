"""What a training run writes into its run folder (reviewgpt.run names every file), and when.

    write_run_files   before the first step, once every check has passed and the model is loaded: a run
                      that fails earlier leaves nothing
    final_checkpoint  which checkpoint the run keeps: the best by held-out loss with --eval, else the last
    finish_run        the run's final files, from that checkpoint; train_summary.json last, whose presence
                      says the run is finished (a run killed while writing them finishes from there)
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from reviewgpt import run
from reviewgpt.data.records import write_rejects
from reviewgpt.files import remove_stale_temporaries, temporary_name
from reviewgpt.recipe import Recipe
from reviewgpt.train.best import best_eval
from reviewgpt.train.distributed import world_size
from reviewgpt.train.logs import peak_memory_per_gpu, plot_loss_curve
from reviewgpt.train.resume import logged_mean_loss, remove_partial_checkpoints

log = logging.getLogger(__name__)


def final_checkpoint(output_dir: Path, state: dict, do_eval: bool, summary: dict) -> Path:
    """The checkpoint whose weights the run keeps: the best by held-out loss with --eval (recorded in
    the summary), else the last one (the last step always saves)."""
    if do_eval:
        best_step, best_loss, _ = best_eval(state["log_history"])
        if best_step is not None:
            summary.update(best_step=best_step, best_eval_loss=best_loss)
            return run.checkpoint_folder(output_dir, best_step)
    return run.checkpoint_folder(output_dir, state["global_step"])


def write_run_files(output_dir: Path, recipe: Recipe, identity: dict, rejected, state: Optional[dict],
                    main_process: bool) -> None:
    """What a run writes before its first step, once every check has passed and the model is loaded (a
    run that fails before training leaves nothing): leftovers of a killed save removed, the rejects,
    the log cut back to the checkpoint resumed (or started anew), what defines the run, the recipe."""
    if not main_process:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for partial in remove_partial_checkpoints(output_dir):
        log.warning("removed %s, a checkpoint cut short while saving", partial)
    remove_stale_temporaries(output_dir)
    if rejected:
        write_rejects(rejected, output_dir / run.REJECTS_FILE)
        log.warning("%d invalid record(s) set aside in %s", len(rejected), output_dir / run.REJECTS_FILE)
    log_path = output_dir / run.LOG_FILE
    if state is not None:
        run.truncate_log(log_path, state["global_step"])
    else:
        log_path.unlink(missing_ok=True)
    run.write_identity(output_dir, identity)
    run.write_recipe(recipe, output_dir)


def finish_run(output_dir: Path, final: Path, summary: dict, state: Optional[dict], global_step: Optional[int],
               trained_s: float, main_process: bool) -> dict:
    """The run's final files, from a checkpoint (the last, or the best by held-out loss): its adapter or
    model and its tokenizer (linked, each file renamed into place whole), the loss curve, then
    train_summary.json, whose presence says the run is finished. `state` is the last checkpoint's
    trainer state when nothing was trained in this process."""
    if state is not None:  # finishing a run that trained to the end before it was killed
        global_step = state["global_step"]
        summary.update(train_loss=logged_mean_loss(state), train_tokens=0, tokens_per_s=None)
    summary.update(global_step=global_step, seconds=round(trained_s, 1), world_size=world_size(),
                   peak_allocated_gib_per_gpu=peak_memory_per_gpu(), loss_curve=None)
    if not main_process:
        return summary
    remove_stale_temporaries(output_dir)  # what a killed finish left
    for source in sorted(final.iterdir()):
        if source.is_file() and not run.TRAINER_FILE.match(source.name):
            temporary = temporary_name(output_dir / source.name)
            temporary.unlink(missing_ok=True)
            try:
                os.link(source, temporary)  # the checkpoint's own bytes, no copy of a large model
            except OSError:
                shutil.copyfile(source, temporary)
            os.replace(temporary, output_dir / source.name)
            temporary.unlink(missing_ok=True)  # rename does nothing when both are links to one file already
    png = plot_loss_curve(output_dir / run.LOG_FILE, output_dir / run.LOSS_CURVE_FILE)
    summary["loss_curve"] = str(png) if png else None
    run.write_summary(output_dir, summary)
    return summary
