"""Load `reviewgpt data prepare`'s Alpaca export with LLaMA-Factory's own `get_dataset` (llmtuner 0.6.3)
and check that every review reaches training whole. Run through `nox -s llamafactory`, offline.

    python scripts/check_llamafactory_export.py [DATA.jsonl] [--cutoff 12288] [--template mistral]
        [--tokenizer DIR]

Without DATA, long synthetic papers are used. The tokenizer is Mistral 7B's real one, from the
mistral-common package, saved to a folder (no hub), unless --tokenizer names another (a ChatML one,
such as SmolLM2's or `reviewgpt tiny-model --family llama`'s, for --template chatml). The same records are exported twice: with
`--tokenizer/--max-length` (papers trimmed for LLaMA-Factory) and without (the control); the check
fails if any trimmed row loses review tokens, or if the control shows no cut review on data that
should have some (then the check could not fail).

llmtuner's top-level __init__ imports its web UI and API server (gradio, fastapi), and its pins
(peft >= 0.10, trl >= 0.8.1) differ from the reference pins; its data path needs neither, so the
package is installed without dependencies, registered without running that file, and its version
check is turned off with its own DISABLE_VERSION_CHECK.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path


def import_llamafactory_data():
    # llmtuner.hparams checks peft >= 0.10 and trl >= 0.8.1 at import, for its trainers; its own switch
    # turns that off (the data path runs on the reference pins).
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    spec = importlib.util.find_spec("llmtuner")  # locates the package without running its __init__
    if spec is None:
        sys.exit("llmtuner is not installed: run this through `nox -s llamafactory`.")
    package = types.ModuleType("llmtuner")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["llmtuner"] = package
    from llmtuner.data import get_dataset
    from llmtuner.extras.constants import IGNORE_INDEX
    from llmtuner.hparams import DataArguments, ModelArguments

    return get_dataset, DataArguments, ModelArguments, IGNORE_INDEX


def mistral_tokenizer(folder: Path) -> Path:
    import mistral_common
    from transformers import LlamaTokenizerFast

    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    tokenizer = LlamaTokenizerFast(vocab_file=str(model), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_data(path: Path) -> Path:
    from reviewgpt.data.sample import sample_records

    records = sample_records(n_papers=12, reviews_per_paper=1, seed=11)
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):  # most papers far longer than the cutoff, two that fit
            f.write(json.dumps({**r, "paper": r["paper"] * (1 if i < 2 else 12 + 4 * i)}) + "\n")
    return path


def load_with_llamafactory(export: Path, tokenizer_dir: Path, cutoff: int, template: str, cache: Path):
    get_dataset, DataArguments, ModelArguments, ignore = import_llamafactory_data()
    from transformers import AutoTokenizer, Seq2SeqTrainingArguments

    # As llmtuner.model.load_tokenizer does (use_fast, no split_special_tokens, right padding).
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True, split_special_tokens=False,
                                              padding_side="right")
    model_args = ModelArguments(model_name_or_path=str(tokenizer_dir), cache_dir=str(cache))
    data_args = DataArguments(template=template, dataset="paper_review", dataset_dir=str(export),
                              cutoff_len=cutoff, overwrite_cache=True)
    training_args = Seq2SeqTrainingArguments(output_dir=str(cache / "out"), do_train=True, report_to=[])
    dataset = get_dataset(tokenizer, model_args, data_args, training_args, stage="sft")
    rows = json.loads((export / "paper_review.json").read_text(encoding="utf-8"))
    whole = []
    for row, example in zip(rows, dataset):
        expected = tokenizer.encode(row["output"], add_special_tokens=False) + [tokenizer.eos_token_id]
        labelled = [t for t in example["labels"] if t != ignore]  # the review's tokens as LLaMA-Factory trains
        whole.append(labelled == expected)
    assert len(whole) == len(rows) == len(dataset), (len(rows), len(dataset))
    return whole


def prepare(data: Path, out: Path, *extra: str) -> dict:
    from reviewgpt.cli import main

    code = main(["data", "prepare", str(data), "--output", str(out), "--eval-fraction", "0", *extra])
    if code:
        sys.exit(f"reviewgpt data prepare failed (exit {code})")
    return json.loads((out / "dataset_info.json").read_text())


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="JSONL of {paper, review} records (default: synthetic)")
    parser.add_argument("--cutoff", type=int, default=12288, help="LLaMA-Factory's cutoff_len")
    parser.add_argument("--template", default="mistral", help="LLaMA-Factory's template")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: Mistral 7B's, from mistral-common)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else mistral_tokenizer(tmp / "mistral-tokenizer")
        data = Path(args.data) if args.data else synthetic_data(tmp / "synthetic.jsonl")
        prepare(data, tmp / "trimmed", "--tokenizer", str(tokenizer_dir), "--max-length", str(args.cutoff),
                "--llamafactory-template", args.template)
        prepare(data, tmp / "plain")
        trimmed = load_with_llamafactory(tmp / "trimmed", tokenizer_dir, args.cutoff, args.template, tmp / "cache")
        plain = load_with_llamafactory(tmp / "plain", tokenizer_dir, args.cutoff, args.template, tmp / "cache2")
    print(f"LLaMA-Factory get_dataset, template {args.template}, cutoff_len {args.cutoff}, {len(trimmed)} rows: "
          f"export trimmed by reviewgpt: {sum(trimmed)}/{len(trimmed)} reviews whole; "
          f"untrimmed export: {len(plain) - sum(plain)}/{len(plain)} reviews cut")
    if not all(trimmed):
        print("FAIL: LLaMA-Factory cut reviews of the trimmed export")
        return 1
    if not args.data and all(plain):
        print("FAIL: the control lost no review, so this check could not have failed")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
