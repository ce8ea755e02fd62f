"""The best checkpoint by held-out review loss, and early stopping (`train --eval`).

With --eval the run evaluates the held-out papers' review loss every `eval_steps` and at its last
step, saves a checkpoint at each of those steps, and its final adapter (or model) is the checkpoint
with the lowest loss: `train.loop.finish_run` links it into the run folder and train_summary.json
says which step (`best_step`, `best_eval_loss`). The Trainer tracks it (`metric_for_best_model`
eval_loss) and its checkpoint rotation never deletes it. With `early_stopping_patience` N the run
stops after N evaluations in a row without a lower loss.

Everything is read from the log history the checkpoints carry, not kept in memory, so a resumed run
counts the evaluations before the interruption, and a run killed after it stopped early finishes
from its best checkpoint without training again.
"""

from __future__ import annotations

from typing import List, Optional, Tuple


def best_eval(log_history: List[dict]) -> Tuple[Optional[int], Optional[float], int]:
    """(step, loss) of the lowest eval_loss so far, and how many evaluations came after it."""
    best_step, best_loss, since = None, None, 0
    for row in log_history:
        if "eval_loss" not in row:
            continue
        if best_loss is None or row["eval_loss"] < best_loss:
            best_step, best_loss, since = row["step"], row["eval_loss"], 0
        else:
            since += 1
    return best_step, best_loss, since


def stopped_early(log_history: List[dict], patience: Optional[int]) -> bool:
    return bool(patience) and best_eval(log_history)[2] >= patience


def make_best_callback(patience: Optional[int]):
    from transformers import TrainerCallback

    class BestCheckpointCallback(TrainerCallback):
        """Evaluate and save at the last step too; save at every evaluation (the Trainer records the
        best only for checkpoints saved right after an evaluation); stop after `patience` evaluations
        without improvement. Placed before the log callback, which logs at every save."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_evaluate = True
            if control.should_evaluate:
                control.should_save = True

        def on_evaluate(self, args, state, control, **kwargs):
            if stopped_early(state.log_history, patience):
                control.should_training_stop = True

    return BestCheckpointCallback()
