"""`data prepare`: validate, de-duplicate and split a data file by paper, then write the split as
JSONL (what `reviewgpt train` reads) and as LLaMA-Factory's Alpaca JSON with its dataset_info.json.

Everything is computed before anything is written, so a record that fails (a review LLaMA-Factory
would cut at --max-length) leaves the folder as it was; each file is written whole under a
temporary name and renamed into place, dataset_info.json last. Files of an earlier prepare that
this one does not produce (an eval split, rejects) are removed, so the folder describes one run of
it. An output file that is the input file is refused before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from reviewgpt.data.records import export_alpaca, load_records, split_by_paper, write_jsonl, write_rejects
from reviewgpt.errors import UserError
from reviewgpt.files import refuse_output_is_input, remove_stale_temporaries

TRAIN_FILE, EVAL_FILE, REJECTS_FILE = "train.jsonl", "eval.jsonl", "rejects.jsonl"
EXPORTS = {"train": "paper_review", "eval": "paper_review_eval"}  # LLaMA-Factory data set names
INFO_FILE = "dataset_info.json"


def output_files(out_dir) -> list:
    """Every file `prepare` may write into `out_dir`."""
    out = Path(out_dir)
    return [out / TRAIN_FILE, out / EVAL_FILE, out / REJECTS_FILE, *(out / f"{n}.json" for n in EXPORTS.values()),
            out / INFO_FILE]


def prepare(path, out_dir, eval_fraction: float = 0.05, seed: int = 42, skip_invalid: bool = False,
            tokenizer=None, max_length: Optional[int] = None, llamafactory_template: str = "mistral") -> dict:
    """Split `path` into `out_dir`; with a tokenizer and max_length, trim the exported papers so
    LLaMA-Factory's cutoff never reaches a review (reviewgpt.data.llamafactory). Returns a summary."""
    if (tokenizer is None) != (max_length is None):
        raise UserError("--tokenizer and --max-length go together: the tokenizer counts the tokens that "
                        "LLaMA-Factory's --cutoff_len (--max-length) allows.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; pass a folder for the prepared files.")
    for target in output_files(out):
        refuse_output_is_input(target, {"the data file": path}, "--output")

    loaded = load_records(path, skip_invalid=skip_invalid)
    train, evals = split_by_paper(loaded.records, eval_fraction, seed)
    exported, trimmed = {EXPORTS["train"]: train, **({EXPORTS["eval"]: evals} if evals else {})}, 0
    if tokenizer is not None:  # train.jsonl/eval.jsonl stay whole: `reviewgpt train` trims them itself
        from reviewgpt.data.llamafactory import fit_records

        for name, records in exported.items():
            exported[name], n = fit_records(records, tokenizer, llamafactory_template, max_length)
            trimmed += n

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, tuple(f.name for f in output_files(out)))  # what a killed prepare left
    stale = [out / REJECTS_FILE] if not loaded.rejected else []
    stale += [out / f"{EXPORTS['eval']}.json"] if not evals else []
    for old in stale:
        old.unlink(missing_ok=True)
    if loaded.rejected:
        write_rejects(loaded.rejected, out / REJECTS_FILE)
    write_jsonl(train, out / TRAIN_FILE)
    write_jsonl(evals, out / EVAL_FILE)
    export_alpaca(out, exported)  # dataset_info.json last
    return {"records": loaded.total, "valid": len(loaded.records), "invalid": len(loaded.rejected),
            "duplicates": loaded.duplicates, "train": len(train), "eval": len(evals),
            "train_papers": len({r.paper_id for r in train}), "eval_papers": len({r.paper_id for r in evals}),
            "llamafactory_papers_trimmed": trimmed if tokenizer is not None else None, "output": str(out)}
