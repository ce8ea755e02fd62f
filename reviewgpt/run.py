"""The run folder: what `reviewgpt train --output DIR` writes and `merge`, `review`, `eval`, `needle`
and `report` read back. Every file name of that format, and the defaults a reader falls back on when
a folder does not record a value, live here; nothing else spells them.

    RUN/reviewgpt_recipe.yaml   the recipe the run trained with (read_recipe / write_recipe)
    RUN/train_log.jsonl         one JSON row per Trainer log (read_log / append_log / truncate_log)
    RUN/train_summary.json      what `train` returns (write_summary)
    RUN/loss_curve.png, RUN/rejects.jsonl, RUN/adapter_config.json (peft: adapter_base)
    MERGED/reviewgpt.json       what `merge` records about a merged model (merge_metadata)
    RUN/needle/needle.csv       `reviewgpt needle`'s cells (+ needle_config.json, needle_heatmap.png)

Imports nothing from reviewgpt but errors: data, models, train and eval all read it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

from reviewgpt.errors import UserError

log = logging.getLogger(__name__)

RECIPE_FILE = "reviewgpt_recipe.yaml"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
REJECTS_FILE = "rejects.jsonl"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MERGE_METADATA_FILE = "reviewgpt.json"
NEEDLE_DIR = "needle"
NEEDLE_CSV = "needle.csv"
NEEDLE_CONFIG = "needle_config.json"
NEEDLE_PNG = "needle_heatmap.png"

# What a reader assumes when the folder does not say (a merged model of an older run, a plain model).
DEFAULT_TEMPLATE = "alpaca-reference"  # the reference's prompt
REFERENCE_MAX_INPUT_TOKENS = 7168  # the reference truncated its inputs to 7168 tokens (8192 - 1024)
DEFAULT_MAX_NEW_TOKENS = 1024  # the longest review the reference generated


def is_run(folder) -> bool:
    """A `reviewgpt train` output (an adapter), as opposed to a merged or plain model folder."""
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def read_recipe(run_dir) -> dict:
    """The run's recipe as written (a plain dict: a run of an older reviewgpt may lack newer fields);
    {} when the folder has none."""
    import yaml

    path = Path(run_dir) / RECIPE_FILE
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def write_recipe(recipe, run_dir) -> Path:
    """Write a Recipe (anything with `to_dict()`) into the run folder."""
    import yaml

    path = Path(run_dir) / RECIPE_FILE
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def adapter_base(run_dir) -> str:
    """The base model the run's adapter was trained on, as peft recorded it."""
    path = Path(run_dir) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {ADAPTER_CONFIG_FILE}; pass the folder `reviewgpt train --output` wrote.")
    return json.loads(path.read_text(encoding="utf-8"))["base_model_name_or_path"]


def read_merge_metadata(folder) -> dict:
    path = Path(folder) / MERGE_METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_merge_metadata(folder, metadata: dict) -> Path:
    path = Path(folder) / MERGE_METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


def read_metadata(folder) -> dict:
    """What a model folder says about its training: the run's recipe, or a merged model's metadata."""
    return read_recipe(folder) if is_run(folder) else read_merge_metadata(folder)


def read_log(path) -> List[dict]:
    """The rows of a train_log.jsonl (a run folder or the file); a line that is not JSON is skipped
    with a warning (a crash can cut the last one short)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    rows = []
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a line that is not JSON", path, number)
    return rows


def append_log(path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def truncate_log(path, step: int) -> None:
    """On resume, drop log lines of steps the crashed run did after its last checkpoint."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def write_summary(run_dir, summary: dict) -> Path:
    path = Path(run_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def prompt_budget(metadata: dict, max_new_tokens: int, requested: Optional[int] = None) -> int:
    """The prompt length to generate with: asked for, else recorded by the run, else the trained
    length minus the review, else the reference's 7168."""
    if requested:
        return requested
    if metadata.get("review_max_input_tokens"):
        return int(metadata["review_max_input_tokens"])
    if metadata.get("max_seq_length"):
        return max(int(metadata["max_seq_length"]) - max_new_tokens, 1)
    return REFERENCE_MAX_INPUT_TOKENS
