"""What a run writes about itself while and after it trains: the JSONL log callback, the tokens it
trained on, the loss curve and the peak GPU memory of every process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List, Optional

import torch

from reviewgpt import run
from reviewgpt.files import atomic_path
from reviewgpt.train.distributed import floats_in_logs


class TrainedTokens:
    """Counts the real (non-pad) tokens of the micro-batches the model trains on, for tokens/s:
    `with TrainedTokens(model) as trained: ...; trained.tokens`.

    Counted at the model's forward in training mode, not in the collator: accelerate's DataLoader
    fetches one micro-batch ahead, so a run that stops mid-epoch collated a micro-batch it never
    trained on (+25% tokens at micro-batch 8 over 2 steps of 2, seen on the device). Eval batches
    (model in eval mode) are not counted. The counting forward is an instance attribute (DDP,
    DeepSpeed and accelerate call it) and is removed on exit, like the run's other patches."""

    def __init__(self, model):
        self.model = model
        self.tokens = 0
        self._counting = None
        self._previous = None

    def __enter__(self) -> TrainedTokens:
        model, forward = self.model, self.model.forward
        self._previous = vars(model).get("forward")

        def counting_forward(*args, **kwargs):
            if model.training:
                mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
                self.tokens += int(mask.sum()) if mask is not None else (ids.numel() if ids is not None else 0)
            return forward(*args, **kwargs)

        self._counting = model.forward = counting_forward
        return self

    def __exit__(self, *exc) -> None:
        if vars(self.model).get("forward") is not self._counting:
            return  # wrapped again on top (accelerate's autocast): that wrapper owns it now
        if self._previous is None:
            del self.model.forward
        else:
            self.model.forward = self._previous


def make_log_callback(path: Path, epoch_of_step: Callable[[int], float]):
    """The run's log callback; `epoch_of_step` gives the epoch a step reaches (the Trainer reads the
    run as one long epoch: train.dataset.run_order)."""
    from transformers import TrainerCallback

    class JsonlLogCallback(TrainerCallback):
        """Appends every log (loss, learning rate, eval loss) to train_log.jsonl as it happens, and saves
        a checkpoint at the last step: the run's adapter is that checkpoint's, so a run killed while it
        writes its final files finishes from it without training again (train.loop.finish_run)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = True
            # Log at every checkpoint, so a checkpoint's log history holds every step's loss up to it
            # and a resumed run can report the mean over all its steps (`run_mean_loss`).
            if control.should_save:
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            # Tensors (deepspeed >= 0.13.2's grad_norm) -> floats, here and in the copy the Trainer
            # keeps in its state, which transformers 4.38.x dumps to JSON (transformers#29207).
            floats_in_logs(logs)
            if state.log_history:
                floats_in_logs(state.log_history[-1])
            if not state.is_world_process_zero:
                return
            logs["epoch"] = round(epoch_of_step(state.global_step), 4)
            if state.log_history:
                state.log_history[-1]["epoch"] = logs["epoch"]
            row = {"step": state.global_step, "epoch": logs["epoch"], "time": round(time.time(), 3), **logs}
            run.append_log(path, row)

    return JsonlLogCallback()


def logs_to_stderr(trainer) -> None:
    """Keep stdout for the command's result: `reviewgpt train` prints one JSON line there, and a
    script reading it must get only that. transformers 4.38.2 prints every log as a Python dict on
    stdout (ProgressCallback under its progress bar, PrinterCallback without one); the same
    callbacks here write those lines to stderr, where the progress bar already is. Also drops
    huggingface_hub's repo-card notice that every adapter save can print (models.py says why)."""
    import sys

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from reviewgpt.models import silence_repo_card_notice

    class StderrProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None:
                logs.pop("total_flos", None)
                self.training_bar.write(str(logs), file=sys.stderr)

    class StderrPrinterCallback(PrinterCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs.pop("total_flos", None)
            if state.is_local_process_zero:
                print(logs, file=sys.stderr)

    for printing, to_stderr in ((ProgressCallback, StderrProgressCallback), (PrinterCallback, StderrPrinterCallback)):
        if trainer.pop_callback(printing) is not None:
            trainer.add_callback(to_stderr)
    silence_repo_card_notice()


def peak_memory_per_gpu() -> Optional[List[float]]:
    """Peak allocated GiB of each process's GPU (gathered from every rank under DDP)."""
    if not torch.cuda.is_available():
        return None
    mine = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, mine)
        return everyone
    return [mine]


def plot_loss_curve(log_path: Path, png_path: Path) -> Optional[Path]:
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = {}, {}
    for row in run.read_log(log_path):
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            evals[row["step"]] = row["eval_loss"]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss")
    if evals:
        ax.plot(sorted(evals), [evals[s] for s in sorted(evals)], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as temporary:
        fig.savefig(temporary, format="png")
    plt.close(fig)
    return png_path
