"""The needle test measures what the model really attends to, sliding window included."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.eval.needle import (
    NeedleConfig,
    answer_loss,
    build_haystack,
    greedy_answer,
    load_filler,
    load_needle_model,
)
from tests.util import needs_sdpa

WINDOW, LAYERS = 16, 2
LENGTH = 160  # far beyond the model's reach of LAYERS x WINDOW = 32 tokens
CONFIG = NeedleConfig(lengths=(LENGTH,), depths=(50,))


@pytest.fixture(scope="module")
def windowed_mistral(tmp_path_factory):
    from reviewgpt.models.tiny import build_tiny_model

    return build_tiny_model("mistral", tmp_path_factory.mktemp("mistral-w16"), layers=LAYERS, sliding_window=WINDOW)


@pytest.fixture(scope="module", params=[pytest.param("sdpa", marks=needs_sdpa), "eager"])
def loaded(request, windowed_mistral):
    model, tokenizer = load_needle_model(str(windowed_mistral), request.param, device="cpu")
    assert model.config._attn_implementation == request.param  # not silently swapped for another
    filler = tokenizer(load_filler(), add_special_tokens=False)["input_ids"]
    return model, tokenizer, filler


def changed(ids, start, stop):
    """`ids` with tokens [start, stop) replaced by other ordinary tokens."""
    return ids[:start] + [100 + (t * 7 + 13) % 5000 for t in ids[start:stop]] + ids[stop:]


def test_text_beyond_the_window_reach_does_not_change_the_needle_loss(loaded):
    model, tokenizer, filler = loaded
    hay = build_haystack(tokenizer, filler, LENGTH, 50, CONFIG)
    reach = LAYERS * WINDOW
    far = dataclasses.replace(hay, ids=changed(hay.ids, 1, hay.answer_start - reach - 8))
    near = dataclasses.replace(hay, ids=changed(hay.ids, hay.answer_start - WINDOW // 2, hay.answer_start - 2))
    base = answer_loss(model, hay)
    assert answer_loss(model, far) == pytest.approx(base, abs=1e-6)  # includes the needle itself (depth 50%)
    assert abs(answer_loss(model, near) - base) > 1e-4


@needs_sdpa
def test_plain_sdpa_forward_would_ignore_the_window(windowed_mistral):
    """Why the needle passes its own mask: transformers 4.38.2's Mistral SDPA path drops the window."""
    import torch

    from reviewgpt.eval.judge.scoring import continuation_logprobs

    model, tokenizer = load_needle_model(str(windowed_mistral), "sdpa", device="cpu")
    filler = tokenizer(load_filler(), add_special_tokens=False)["input_ids"]
    hay = build_haystack(tokenizer, filler, LENGTH, 50, CONFIG)
    far = changed(hay.ids, 1, hay.answer_start - 2 * LAYERS * WINDOW)
    plain = [
        float(continuation_logprobs(model, torch.tensor([ids]), hay.answer_start).mean()) for ids in (hay.ids, far)
    ]
    assert abs(plain[0] - plain[1]) > 1e-5


def test_greedy_answer_with_cache_matches_transformers_generate(windowed_mistral):
    import torch

    model, tokenizer = load_needle_model(str(windowed_mistral), "eager", device="cpu")
    filler = tokenizer(load_filler(), add_special_tokens=False)["input_ids"]
    hay = build_haystack(tokenizer, filler, 64, 30, CONFIG)
    context = torch.tensor([hay.ids[: hay.answer_start]])
    expected = model.generate(
        context,
        attention_mask=torch.ones_like(context),
        do_sample=False,
        max_new_tokens=6,
        pad_token_id=tokenizer.pad_token_id,
    )[0, context.shape[1] :]
    assert greedy_answer(model, tokenizer, hay, 6) == tokenizer.decode(expected, skip_special_tokens=True)


def test_haystack_places_needle_by_depth_and_fills_the_length(windowed_mistral):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(windowed_mistral))
    filler = tokenizer("short filler. ", add_special_tokens=False)["input_ids"]  # repeated to fill
    top, bottom = (build_haystack(tokenizer, filler, 200, d, CONFIG) for d in (0, 100))
    assert len(top.ids) == len(bottom.ids) == 200 and top.ids[0] == tokenizer.bos_token_id
    assert top.needle_position == 1
    needle = tokenizer(" " + CONFIG.needle + " ", add_special_tokens=False)["input_ids"]
    assert bottom.ids[bottom.needle_position : bottom.needle_position + len(needle)] == needle
    assert "7341" in tokenizer.decode(bottom.ids[bottom.answer_start :])
    with pytest.raises(UserError, match="cannot hold"):
        build_haystack(tokenizer, filler, 20, 0, CONFIG)


def test_filler_from_text_or_jsonl(tmp_path):
    (tmp_path / "f.txt").write_text("plain text filler")
    (tmp_path / "f.jsonl").write_text(json.dumps({"paper": "paper one"}) + "\n" + json.dumps({"paper": "paper two"}))
    assert load_filler(tmp_path / "f.txt") == "plain text filler"
    assert load_filler(tmp_path / "f.jsonl") == "paper one\n\npaper two"
    assert "## Introduction" in load_filler()
    with pytest.raises(UserError, match="no such file"):
        load_filler(tmp_path / "missing.txt")


def test_cli_writes_csv_and_heatmap_and_resumes(tmp_path, windowed_mistral, capsys):
    out = tmp_path / "needle"
    args = [
        "needle",
        "--model",
        str(windowed_mistral),
        "--output",
        str(out),
        "--lengths",
        "80,128",
        "--depths",
        "0,50,100",
        "--max-new-tokens",
        "3",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["measured"] == 6
    with open(out / "needle.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["length"]), float(r["depth_percent"])) for r in rows] == [
        (n, d) for n in (80, 128) for d in (0.0, 50.0, 100.0)
    ]
    assert all(float(r["answer_loss"]) > 0 and r["retrieved"] in ("True", "False") for r in rows)
    assert (out / "needle_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 0  # a rerun with the same settings measures nothing again
    assert json.loads(capsys.readouterr().out)["measured"] == 0
    first = (out / "needle.csv").read_text()
    assert main([*args, "--answer", " 9999."]) == 0  # other settings: a fresh table, the old one kept
    result = json.loads(capsys.readouterr().out)
    assert result["measured"] == 6 and result["earlier_results_kept_as"] == str(out / "needle.previous-1.csv")
    assert (out / "needle.previous-1.csv").read_text() == first
    assert json.loads((out / "needle_config.previous-1.json").read_text())["answer"] == " 7341."
    assert main(args) == 0  # back to the first settings: the second table is kept too, nothing is lost
    assert json.loads(capsys.readouterr().out)["earlier_results_kept_as"] == str(out / "needle.previous-2.csv")


def test_cli_user_errors(tmp_path, windowed_mistral, capsys):
    assert main(["needle", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["needle", "--model", str(windowed_mistral), "--output", str(tmp_path / "o"), "--depths", "0,150"]) == 2
    assert "depths must be percentages" in capsys.readouterr().err
