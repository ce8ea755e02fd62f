"""The run folder: what `reviewgpt train --output DIR` writes and `merge`, `review`, `eval`, `needle`
and `report` read back. Every file name of that format, and the defaults a reader falls back on when
a folder does not record a value, live here; nothing else spells them.

    RUN/reviewgpt_recipe.yaml   the recipe the run trained with (read_recipe / write_recipe)
    RUN/reviewgpt_run.json      what defines the run: data digest, the fields a resume may not change
                                (read_identity / write_identity; reviewgpt.train.resume compares them)
    RUN/train_log.jsonl         one JSON row per Trainer log (read_log / append_log / truncate_log)
    RUN/train_summary.json      what `train` returns (write_summary)
    RUN/loss_curve.png, RUN/rejects.jsonl, RUN/adapter_config.json (peft: adapter_base)
    RUN/checkpoint-N/           the Trainer's checkpoints (checkpoint_folder, checkpoint_step; what a
                                complete one holds: CHECKPOINT_WEIGHTS, TRAINER_STATE_FILE, ...)
    MERGED/reviewgpt.json       what `merge` records about a merged model (merge_metadata)
    RUN/needle/needle.csv       `reviewgpt needle`'s cells (+ needle_config.json, needle_heatmap.png)

Every file here is written under a temporary name and renamed into place (reviewgpt.files), and
log lines are appended whole: a run killed at any point leaves each file old or new, never half.
A run folder holds only what `run_folder_names` allows; `foreign_file` names the first other file,
so `train --output` into a folder of someone else's files is refused before anything is written.

Imports nothing from reviewgpt but errors and files: data, models, train and eval all read it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import List, Optional

from reviewgpt.errors import UserError
from reviewgpt.files import append_line, atomic_write_json, atomic_write_text, is_temporary

log = logging.getLogger(__name__)

RECIPE_FILE = "reviewgpt_recipe.yaml"
IDENTITY_FILE = "reviewgpt_run.json"
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
OOM_EVENTS_FILE = "oom_recovery.jsonl"
# What else a run folder holds: peft's adapter and model card, the tokenizer's files, the Trainer's
# checkpoints (tmp-checkpoint-N while one is written), its arguments, tensorboard's runs/.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", ADAPTER_CONFIG_FILE, "README.md")
OTHER_RUN_FILES = ("training_args.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "runs")
CHECKPOINT_PREFIXES = ("checkpoint-", "tmp-checkpoint-")
CHECKPOINT_GLOB = "checkpoint-*"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"
# A checkpoint is complete with its weights (an adapter, or a full fine-tune's model), the optimizer's
# and scheduler's state, the trainer state and the RNG state, which transformers 4.38.2 writes last.
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
CHECKPOINT_STATE_FILES = ("optimizer.pt", "scheduler.pt", TRAINER_STATE_FILE)
RNG_STATE_GLOB = "rng_state*.pth"
# A full fine-tune's model (finetune full): config, generation config, weights (sharded or not).
MODEL_FILE = re.compile(r"^(config\.json|generation_config\.json|model[-.\w]*\.(safetensors|bin|json))$")
# What a checkpoint holds for the Trainer alone; everything else in it is the run's model and tokenizer.
TRAINER_FILE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|training_args\.bin|"
                          r"rng_state.*\.pth)$")

# What a reader assumes when the folder does not say (a merged model of an older run, a plain model).
DEFAULT_TEMPLATE = "alpaca-reference"  # the reference's prompt
REFERENCE_MAX_INPUT_TOKENS = 7168  # the reference truncated its inputs to 7168 tokens (8192 - 1024)
DEFAULT_MAX_NEW_TOKENS = 1024  # the longest review the reference generated


def checkpoint_folder(run_dir, step: int) -> Path:
    """The Trainer's checkpoint of `step` in a run folder."""
    return Path(run_dir) / f"checkpoint-{step}"


def checkpoint_step(folder) -> Optional[int]:
    """The step of a `checkpoint-N` folder name (None for any other name, tmp-checkpoint-N included)."""
    match = CHECKPOINT_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def is_run(folder) -> bool:
    """A `reviewgpt train` output of an adapter (finetune qlora or lora), as opposed to a merged or plain
    model folder, or a full fine-tune (`is_full_run`), which is a model folder itself."""
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def is_full_run(folder) -> bool:
    """A `reviewgpt train --finetune full` output: the trained model's own weights, nothing to merge."""
    return read_recipe(folder).get("finetune") == "full" and (Path(folder) / "config.json").is_file()


def trained_on_4bit(metadata: dict) -> bool:
    """The run trained an adapter on a 4-bit base (finetune qlora; `quantize: true` in the recipe files of
    runs from before the finetune field)."""
    return metadata.get("finetune", "qlora" if metadata.get("quantize") else None) == "qlora"


def read_recipe(run_dir) -> dict:
    """The run's recipe as written (a plain dict: a run of an older reviewgpt may lack newer fields);
    {} when the folder has none."""
    import yaml

    path = Path(run_dir) / RECIPE_FILE
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def write_recipe(recipe, run_dir) -> Path:
    """Write a Recipe (anything with `to_dict()`) into the run folder."""
    import yaml

    return atomic_write_text(Path(run_dir) / RECIPE_FILE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def read_identity(run_dir) -> dict:
    """What defines the run (write_identity), {} for a folder without it (no run, or an older one)."""
    path = Path(run_dir) / IDENTITY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_identity(run_dir, identity: dict) -> Path:
    return atomic_write_json(Path(run_dir) / IDENTITY_FILE, identity)


def run_folder_names() -> tuple:
    """File and folder names a run folder may hold (besides checkpoints and temporary files)."""
    return (RECIPE_FILE, IDENTITY_FILE, LOG_FILE, SUMMARY_FILE, LOSS_CURVE_FILE, REJECTS_FILE, OOM_EVENTS_FILE,
            NEEDLE_DIR, *ADAPTER_FILES, *OTHER_RUN_FILES)


def foreign_file(folder) -> Optional[Path]:
    """The first entry of `folder` that is not a reviewgpt run's (None: empty, absent or a run).

    A run writes what defines it before anything else, so a folder without that (or, from an older
    reviewgpt, without its recipe) is not a run: any file in it is foreign, a README.md too."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    entries = sorted(child for child in folder.iterdir() if not is_temporary(child.name))
    is_a_run = (folder / IDENTITY_FILE).is_file() or (folder / RECIPE_FILE).is_file()
    allowed = set(run_folder_names()) if is_a_run else set()
    for child in entries:
        name = child.name
        if name in allowed or (is_a_run and child.is_dir() and name.startswith(CHECKPOINT_PREFIXES)):
            continue
        if is_a_run and MODEL_FILE.match(name):
            continue
        return child
    return None


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
    return atomic_write_json(Path(folder) / MERGE_METADATA_FILE, metadata)


def file_digest(path) -> str:
    """sha256 of a file's bytes (16 hex digits), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def adapter_digest(run_dir) -> Optional[str]:
    """The digest of a run folder's adapter weights (None: no adapter file)."""
    for name in ADAPTER_FILES[:2]:
        if (Path(run_dir) / name).is_file():
            return file_digest(Path(run_dir) / name)
    return None


def model_fingerprint(folder) -> str:
    """Which weights a model folder holds, cheaply: a run folder's adapter digest; a merged model's
    recorded adapter digest with its base, precision and base weights; else the names, sizes and
    modification times of its weight files. `review` records it with each review line and will not
    mix reviews of two models in one output file."""
    import hashlib

    folder = Path(folder)
    if is_run(folder):
        return "adapter:" + (adapter_digest(folder) or "none")
    metadata = read_merge_metadata(folder)
    if metadata.get("adapter_digest"):
        parts = [metadata["adapter_digest"], metadata.get("base"), metadata.get("dtype"), metadata.get("base_weights")]
        return "merged:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    return "files:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def read_metadata(folder) -> dict:
    """What a model folder says about its training: the run's recipe, or a merged model's metadata."""
    return read_recipe(folder) or read_merge_metadata(folder)


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
    append_line(path, json.dumps(row))


def truncate_log(path, step: int) -> None:
    """On resume, drop log lines of steps the crashed run did after its last checkpoint (and a last
    line a kill cut short)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [json.dumps(row) for row in read_log(path) if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def read_summary(run_dir) -> dict:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_summary(run_dir, summary: dict) -> Path:
    return atomic_write_json(Path(run_dir) / SUMMARY_FILE, summary)


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
