"""Data: records in, token ids out; nothing here loads a model or imports the rest of reviewgpt.

    records.py      JSONL/JSON records -> validated Record (paper, review), split by paper, exports
    prompt.py       the reviewer prompt, templates (one per model format) and trl's formatting_func
    tokenization.py whole texts -> input ids + labels, the paper trimmed and the review kept whole
    check.py        `reviewgpt data check` / `data show`: what training would do to each record
    rating.py       a review's "Rating: N/10" line: written for training, parsed from a generated review
    sample.py       synthetic paper-review records (quickstart, tests; nothing downloaded)
    llamafactory.py `data prepare --format alpaca`: LLaMA-Factory's layout, reviews kept whole
"""
