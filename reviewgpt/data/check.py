"""`data check`: validate a data file and count, with the recipe's tokenizer and template, what
training would do to each record; `data show`: one record as the model will see it. With
`review_rating` both tokenize each review with its rating line, as training does.

The caller loads the tokenizer (reviewgpt.models.load_tokenizer, the one pad policy): nothing in
reviewgpt.data loads a model."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

from reviewgpt.data.rating import training_review
from reviewgpt.data.records import load_records, write_rejects
from reviewgpt.data.tokenization import PromptEncoder
from reviewgpt.errors import UserError
from reviewgpt.files import refuse_existing_folder, refuse_output_is_input

log = logging.getLogger(__name__)


def _percentile(sorted_values, q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def length_fitting(sorted_needs, share: float) -> int:
    """The smallest max_length at which at least `share` of the reviews fit (nearest rank)."""
    if not sorted_needs:
        return 0
    return sorted_needs[max(0, math.ceil(share * len(sorted_needs)) - 1)]


INVALID_SHOWN = 5  # invalid records named in the summary; --rejects writes them all


def check_data(path, tokenizer, template: str, max_length: int, recipe_name: Optional[str] = None,
               skip_invalid: bool = True, rejects_path=None, review_rating: bool = False) -> dict:
    """Counts for a data file with `template` at `max_length` tokens. Invalid records are counted
    (and written to `rejects_path`); with `skip_invalid=False` the first one stops with its file:line.
    Ratings are counted either way; `review_rating` counts tokens with the rating lines."""
    from tqdm.auto import tqdm

    from reviewgpt.data.prompt import get_template

    if rejects_path:  # `data check F --rejects F` would replace the data by its rejects
        refuse_output_is_input(rejects_path, {"the data file": path}, "--rejects")
        refuse_existing_folder(rejects_path, "--rejects")
    loaded = load_records(path, skip_invalid=skip_invalid)
    if loaded.rejected and rejects_path:
        Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
        write_rejects(loaded.rejected, rejects_path)
    encoder = PromptEncoder(tokenizer, get_template(template))
    lengths, needs, papers_truncated, reviews_too_long, reviews_cut_by_tail = [], [], 0, 0, 0
    for record in tqdm(loaded.records, desc="counting tokens", unit="rec", disable=len(loaded.records) < 50):
        encoded = encoder.encode_text(record.paper, training_review(record, review_rating))
        total = len(encoded.ids)
        lengths.append(total)
        needs.append(encoder.shortest_length(encoded))  # the review whole, the paper cut to a token
        if total > max_length:
            # trl 0.7.11's truncation=True keeps the first max_length tokens: the review's tail goes.
            reviews_cut_by_tail += 1
            if encoder.shortest_length(encoded) > max_length:
                reviews_too_long += 1
            else:
                papers_truncated += 1
    lengths.sort()
    needs.sort()
    return {
        "file": str(Path(path)),
        "recipe": recipe_name,
        "template": template,
        "max_length": max_length,
        "records": loaded.total,
        "valid": len(loaded.records),
        "invalid": len(loaded.rejected),
        "duplicates": loaded.duplicates,
        "papers": len({r.paper_id for r in loaded.records}),
        "papers_truncated": papers_truncated,
        "reviews_truncated": reviews_too_long,
        "reviews_cut_by_plain_trl": reviews_cut_by_tail,
        "max_tokens": lengths[-1] if lengths else 0,
        "median_tokens": _percentile(lengths, 0.5),
        "p90_tokens": _percentile(lengths, 0.9),
        # The smallest --max-seq-length at which every review (95% of them) fits whole.
        "max_length_for_all_reviews": length_fitting(needs, 1.0),
        "max_length_for_95pct_reviews": length_fitting(needs, 0.95),
        "invalid_examples": [r.error for r in loaded.rejected[:INVALID_SHOWN]],
        # Ratings (reviewgpt.data.rating): with review_rating, the records without one train without the line.
        "review_rating": review_rating,
        "ratings": sum(r.rating is not None for r in loaded.records),
        "ratings_missing": sum(r.rating is None for r in loaded.records),
        "ratings_unusable": len(loaded.unusable_ratings),  # of the missing: a value that is not an integer 1-10
        "ratings_unusable_examples": loaded.unusable_ratings[:INVALID_SHOWN],
    }


def show_example(path, tokenizer, template_name: str, max_length: int, loss_on: str = "review",
                 index: int = 0, review_rating: bool = False) -> dict:
    """One record as a training example: its ids, labels, decoded parts with and without loss, and
    whether an untrimmed example equals the ids of the model's own tooling."""
    from reviewgpt.data.chat_templates import reference_ids
    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.tokenization import IGNORE_INDEX, ReviewTooLong

    records = load_records(path).records
    if not 0 <= index < len(records):
        raise UserError(f"--index {index}: {path} has {len(records)} valid record(s); pass 0 to {len(records) - 1}.")
    record = records[index]
    template = get_template(template_name)
    encoder = PromptEncoder(tokenizer, template)
    review = training_review(record, review_rating)
    try:
        example = encoder.encode_example(record.paper, review, max_length, loss_on)
    except ReviewTooLong as exc:
        raise UserError(f"{record.source}: {exc}; pass a larger --max-length.") from None
    parts, start = [], 0
    masked = [label == IGNORE_INDEX for label in example.labels]
    for i in range(1, len(example.input_ids) + 1):
        if i == len(example.input_ids) or masked[i] != masked[start]:
            text = tokenizer.decode(example.input_ids[start:i], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
            parts.append({"loss": example.labels[start] != IGNORE_INDEX, "tokens": i - start, "text": text})
            start = i
    if example.paper_truncated:
        faithful = "n/a: the paper was trimmed"
    elif template.chat and not getattr(tokenizer, "chat_template", None):
        faithful = "n/a: the tokenizer has no chat template to compare with"
    else:
        same = example.input_ids == reference_ids(tokenizer, template, record.paper, review)
        tool = "tokenizer.apply_chat_template" if template.chat else "trl 0.7.11's tokenizer(text)"
        faithful = f"{'yes' if same else 'NO'}: ids {'equal' if same else 'differ from'} {tool}"
    return {
        "source": record.source,
        "template": template.name,
        "max_length": max_length,
        "tokens": len(example.input_ids),
        "tokens_with_loss": sum(label != IGNORE_INDEX for label in example.labels),
        "paper_tokens": example.paper_tokens,
        "paper_kept": example.paper_kept,
        "review_tokens": example.review_tokens,
        "rating": record.rating,
        "rating_line": review_rating and record.rating is not None,
        "faithful": faithful,
        "parts": parts,
        "input_ids": example.input_ids,
        "labels": example.labels,
    }
