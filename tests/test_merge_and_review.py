import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.eval.generate import GenerationSettings, generate_reviews
from reviewgpt.merge import merge
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from tests.util import assert_merged_like_adapter


@pytest.fixture(scope="module")
def trained_run(tiny_gemma, sample_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    recipe = load_recipe("tiny", {"model": str(tiny_gemma), "max_steps": 4, "save_steps": 4, "max_seq_length": 384})
    train(recipe, sample_file, run)
    return run


@pytest.fixture(scope="module")
def merged_model(trained_run, tmp_path_factory):
    return merge(trained_run, tmp_path_factory.mktemp("merged"), dtype="float32")


def test_merged_logits_equal_base_plus_adapter(trained_run, merged_model, tiny_gemma):
    ids = torch.tensor([[2, 10, 50, 99, 120, 7, 300]])
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(trained_run)).eval()
        adapter_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_model, torch_dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    assert_merged_like_adapter(base_logits, adapter_logits, merged_logits, atol=1e-5, rtol=1e-4)
    meta = json.loads((merged_model / "reviewgpt.json").read_text())
    assert meta["template"] == "gemma-it" and meta["family"] == "gemma"
    assert not any("lora" in k for k in merged.state_dict())


def test_the_merge_check_cannot_pass_a_merge_that_dropped_the_adapter():
    # The GPU test's numbers before this guard: base and base + adapter 0.042 apart, tolerance 0.05.
    base = torch.zeros(1, 5, 8)
    adapter = base + 0.042
    torch.testing.assert_close(base, adapter, atol=0.05, rtol=0.05)  # a dropped adapter passed the old check
    with pytest.raises(AssertionError, match="could not tell a merge that dropped it"):
        assert_merged_like_adapter(base, adapter, merged_logits=base, atol=0.05, rtol=0.05)
    assert_merged_like_adapter(base, base + 1.0, merged_logits=base + 1.0, atol=0.05, rtol=0.05)


def test_merging_into_a_quantized_base_is_refused_with_the_reason(trained_run, tiny_gemma, tmp_path):
    quantized = tmp_path / "q"
    shutil.copytree(tiny_gemma, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"load_in_4bit": True, "quant_method": "bitsandbytes"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="cannot be merged with its adapter: merge into the 16-bit base"):
        merge(trained_run, tmp_path / "out", base=str(quantized))


def test_merge_cli_has_no_4bit_flag_and_needs_an_adapter(trained_run, tmp_path, capsys):
    # issue 19 item 11: --load-in-4bit existed only to be refused (reviewgpt.merge says why 4-bit cannot merge)
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(trained_run), "--output", str(tmp_path / "o"), "--load-in-4bit"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --load-in-4bit; see `reviewgpt merge --help`" in capsys.readouterr().err
    assert main(["merge", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["merged", "adapter"])
def test_review_writes_one_line_per_paper_and_skips_done_ones(source, merged_model, trained_run, sample_file,
                                                              tmp_path):
    model = merged_model if source == "merged" else trained_run
    out = tmp_path / "reviews.jsonl"
    settings = GenerationSettings(max_new_tokens=8, limit=3)
    result = generate_reviews(model, sample_file, out, settings)
    assert result["written"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["paper000", "paper001", "paper002"]
    for row in rows:
        assert row["template"] == "gemma-it" and 0 < row["generated_tokens"] <= 8
        assert set(row["criteria"]) == {"importance and novelty", "reasons for acceptance",
                                        "reasons for rejection", "suggestions for improvement"}
        assert row["input_tokens"] <= 384 and isinstance(row["paper_truncated"], bool)

    # A crash left half a line: it is dropped and that paper is reviewed again; the others are skipped.
    out.write_text(out.read_text().splitlines()[0] + "\n" + '{"id": "paper001", "rev')
    again = generate_reviews(model, sample_file, out, GenerationSettings(max_new_tokens=8, limit=4))
    assert (again["written"], again["skipped"]) == (3, 1)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        "paper000", "paper001", "paper002", "paper003"]


def test_review_input_budget_trims_the_paper(merged_model, sample_file, tmp_path):
    out = tmp_path / "r.jsonl"
    generate_reviews(merged_model, sample_file, out, GenerationSettings(max_input_tokens=150, max_new_tokens=2,
                                                                        limit=1))
    row = json.loads(out.read_text())
    assert row["input_tokens"] <= 150 and row["paper_truncated"]


def test_review_budget_follows_the_length_the_run_was_trained_at(tmp_path):
    # issue 11 item 6: a tiny run trained with --max-seq-length 1024 reviews with 1024 - max_new_tokens of paper.
    from reviewgpt import run
    from reviewgpt.eval.generate import prompt_budget
    from reviewgpt.recipe import load_recipe

    run.write_recipe(load_recipe("tiny", {"max_seq_length": 1024}), tmp_path)
    meta = run.read_recipe(tmp_path)
    assert prompt_budget(GenerationSettings(), meta, 96) == 1024 - 96
    assert prompt_budget(GenerationSettings(max_input_tokens=300), meta, 96) == 300  # an explicit budget wins


def test_review_never_rewrites_lines_it_did_not_write(tmp_path):
    # issue 11 item 17: only a torn last line is dropped; any other bad line stops the run, file untouched.
    from reviewgpt.eval.generate import done_ids

    out = tmp_path / "reviews.jsonl"
    text = '{"id": "a", "review": "x"}\nnotes I added by hand\n{"id": "b", "review": "y"}\n'
    out.write_text(text)
    with pytest.raises(UserError, match=r"reviews.jsonl:2: not a review line"):
        done_ids(out)
    assert out.read_text() == text
    out.write_text(text.replace("notes I added by hand\n", "") + '{"id": "c", "rev')
    assert done_ids(out) == {"a", "b"}
    assert out.read_text() == '{"id": "a", "review": "x"}\n{"id": "b", "review": "y"}\n'


def _long_paper_file(tmp_path):
    from tests.util import write_jsonl

    # ~5,000 tokens of the tiny Gemma tokenizer: past the 4,096 that its 2,048 positions' causal-mask
    # buffer grows to in transformers 4.38.2, so an uncapped prompt fails with a tensor size mismatch.
    return write_jsonl(tmp_path / "long.jsonl", [{"paper_id": "long", "paper": "A paper on attention. " * 500}])


def test_review_caps_the_prompt_so_prompt_and_review_fit_the_models_positions(tiny_gemma, tmp_path, caplog):
    # issue 19 item 7: a base model records no budget, so the reference's 7,168 tokens would be asked of
    # a model with 2,048 positions.
    out = tmp_path / "r.jsonl"
    with caplog.at_level("INFO", logger="reviewgpt"):
        result = generate_reviews(tiny_gemma, _long_paper_file(tmp_path), out, GenerationSettings(max_new_tokens=8))
    assert result["max_input_tokens"] == 2048 - 8
    row = json.loads(out.read_text())
    assert row["paper_truncated"] and row["input_tokens"] <= 2048 - 8
    assert "more than the model's 2048 positions: papers are trimmed to a 2040-token prompt" in caplog.text


def test_review_refuses_a_review_longer_than_the_models_positions_in_one_line(tiny_gemma, tmp_path, capsys):
    code = main(["review", "--model", str(tiny_gemma), "--papers", str(_long_paper_file(tmp_path)), "--output",
                 str(tmp_path / "r.jsonl"), "--max-new-tokens", "2048"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--max-new-tokens 2048 leaves no room for the paper in the model's 2048 positions" in err


@pytest.mark.parametrize("family", ["gemma", "mistral", "llama"])
@pytest.mark.parametrize("clean_up", [False, True])
def test_reviews_are_decoded_as_tokenizer_decode_does(family, clean_up, request, monkeypatch):
    from reviewgpt.eval.generate import decode_review

    tokenizer = request.getfixturevalue(f"{family}_tokenizer")  # shared by the session: restored after
    monkeypatch.setattr(tokenizer, "clean_up_tokenization_spaces", clean_up)
    assert getattr(tokenizer, "backend_tokenizer", None) is not None  # the fast path is the one tested
    text = "Reasons to accept: the paper's method isn't new , but it works ! Rating: 6/10 \u00e9t\u00e9 \u2014 ok ?"
    ids = tokenizer(text)["input_ids"]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, len(tokenizer), (300,), generator=generator).tolist()  # special ids included
    for tokens in (ids, noise + [tokenizer.eos_token_id] + ids, [], list(tokenizer.all_special_ids)):
        assert decode_review(tokenizer, tokens) == tokenizer.decode(tokens, skip_special_tokens=True)
