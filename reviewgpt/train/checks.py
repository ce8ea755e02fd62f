"""What `reviewgpt train` refuses before it tokenizes or loads any weights: settings that the model or
the data cannot honour, which would otherwise train something other than what was asked without a
word. Each refusal is one sentence naming the flag and the fix.
"""

from __future__ import annotations

import math
from typing import Sequence

from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe


def check_job(recipe: Recipe, train_records: Sequence, eval_records: Sequence, do_eval: bool, data_path) -> None:
    """Refuse a length beyond the model's positions, an --eval that holds nothing out and a
    micro-batch larger than the data (in that order: a one-paper file with --eval is told about
    --eval first, whatever its batch)."""
    check_length_fits_model(recipe)
    check_something_held_out(recipe, eval_records, do_eval, data_path)
    check_batch_fits_data(recipe, len(train_records), len(eval_records))


def check_length_fits_model(recipe: Recipe) -> None:
    """max_seq_length within the model's max_position_embeddings (its config.json).

    No built-in recipe trains beyond its model's positions (gemma-7b-it 8,192 of 8,192, Mistral
    12,288 of 32,768, SmolLM2 8,192 of 8,192, tiny 2,048 of the tiny models' 2,048-4,096). Past them
    transformers 4.38.2's Gemma and Llama fail once their causal-mask buffer (twice the positions)
    is outgrown, and every family trains on rotary positions it never saw. Someone extending the
    context on purpose raises max_position_embeddings in the config, which this check reads.
    """
    from reviewgpt.models import model_positions

    positions = model_positions(recipe.model)
    if positions and recipe.max_seq_length > positions:
        raise UserError(f"--max-seq-length {recipe.max_seq_length} is more than the {positions} positions of "
                        f"{recipe.model} (max_position_embeddings in its config.json); pass --max-seq-length "
                        f"{positions} or less.")


def check_batch_fits_data(recipe: Recipe, n_train: int, n_eval: int) -> None:
    """A micro-batch no larger than the training records each process gets.

    Refused rather than clamped: a micro-batch beyond the data would hold the same records more than
    once (the run's order repeats them epoch after epoch: train.dataset.run_order), with the learning
    rate and the memory plan set for a batch the data cannot fill. The fix is one flag, and nothing has
    been loaded yet.
    """
    from reviewgpt.train.distributed import world_size

    processes = world_size()
    per_process = math.ceil(n_train / processes)
    if recipe.per_device_train_batch_size <= per_process:
        return
    held_out = f" ({n_eval} held out for eval)" if n_eval else ""
    each = f", {per_process} for each of the {processes} processes" if processes > 1 else ""
    raise UserError(f"--per-device-train-batch-size {recipe.per_device_train_batch_size} is more than the "
                    f"{n_train} training records{held_out}{each}; pass --per-device-train-batch-size "
                    f"{per_process} or less.")


def check_something_held_out(recipe: Recipe, eval_records: Sequence, do_eval: bool, data_path) -> None:
    """--eval with nothing to evaluate on is an error, not a warning: the user asked for an eval loss,
    and a run that quietly trains without one ends with `eval_records 0` in its summary, which a
    script reading it would not notice. Refusing costs nothing here, before any weights load."""
    if not do_eval or eval_records:
        return
    if recipe.eval_fraction == 0:
        raise UserError("--eval with eval_fraction 0 holds no paper out; pass --eval-fraction 0.05 (or leave out "
                        "--eval).")
    # split_by_paper holds out at least one paper whenever there are two: this is a one-paper file.
    raise UserError(f"--eval: {data_path} holds one paper, and a paper's reviews are never split between train "
                    "and eval, so nothing can be held out; add papers or leave out --eval.")
