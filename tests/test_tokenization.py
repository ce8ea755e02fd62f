"""Token ids equal what each model's own tooling makes of the same text (issue 10, item 1)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewgpt.data.chat_templates import chat_template_of, reference_ids
from reviewgpt.data.prompt import TEMPLATES, get_template, make_formatting_func
from reviewgpt.data.tokenization import CUT_MARKER, IGNORE_INDEX, PromptEncoder, ReviewTooLong, pad_batch

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=1500)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAPER = "# On Tokens\n\n## Abstract\nWe study how  text is split.\n\n## Method\nA 3.5% gain (Table 1).\n"
REVIEW = "Strengths: a novel idea.\nWeaknesses: small experiments.\n\nSuggestions: add baselines."

# Each chat format with the tokenizer that carries it; Alpaca texts with every tokenizer.
CHAT_PAIRS = [("gemma-it", "gemma"), ("mistral-inst", "mistral"), ("smollm2-chatml", "llama")]
ALPACA_PAIRS = [(t, f) for t in ("alpaca-reference", "alpaca") for f in ("gemma", "mistral", "llama")]


@pytest.fixture(scope="module")
def tokenizers(gemma_tokenizer, mistral_tokenizer, llama_tokenizer):
    return {"gemma": gemma_tokenizer, "mistral": mistral_tokenizer, "llama": llama_tokenizer}


@pytest.fixture(scope="module", params=CHAT_PAIRS + ALPACA_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def encoder(request, tokenizers):
    template, family = request.param
    return PromptEncoder(tokenizers[family], get_template(template))


def test_every_builtin_template_is_tested():
    assert {t for t, _ in CHAT_PAIRS + ALPACA_PAIRS} == set(TEMPLATES)


@pytest.mark.parametrize("paper", [PAPER, "A short paper.", "  padded paper with trailing spaces  \n"])
def test_untrimmed_example_has_the_ids_of_the_model_own_tooling(encoder, paper):
    ex = encoder.encode_example(paper, REVIEW, 100_000)
    assert ex.input_ids == reference_ids(encoder.tokenizer, encoder.template, paper, REVIEW)
    assert not ex.paper_truncated


def test_generation_prompt_has_the_ids_of_the_model_own_tooling(encoder):
    ids, _, _ = encoder.encode_prompt(PAPER, 100_000)
    assert ids == reference_ids(encoder.tokenizer, encoder.template, PAPER)
    ex = encoder.encode_example(PAPER, REVIEW, 100_000)
    assert ex.input_ids[: len(ids)] == ids  # training continues exactly where generation starts


def test_alpaca_reference_ids_are_what_trl_sft_trainer_makes(tokenizers):
    """trl 0.7.11's own tokenization of the reference formatting_func text (no truncation needed)."""
    import types

    from datasets import Dataset
    from trl import SFTTrainer

    for family, tokenizer in tokenizers.items():
        data = Dataset.from_dict({"input": [PAPER, "Another paper."], "output": [REVIEW, "Short review."]})
        trl_self = types.SimpleNamespace(_dataset_sanity_checked=False, dataset_num_proc=None, dataset_batch_size=1000)
        made = SFTTrainer._prepare_non_packed_dataloader(
            trl_self, tokenizer, data, None, 4096, formatting_func=make_formatting_func("alpaca-reference"))
        encoder = PromptEncoder(tokenizer, get_template("alpaca-reference"))
        ours = [encoder.encode_example(p, r, 4096).input_ids for p, r in zip(data["input"], data["output"])]
        assert made["input_ids"] == ours, family


def test_real_mistral_tokenizer_gets_its_own_format(mistral_tokenizer):
    """The symptoms of issue 10: no '▁' before the paper, '▁[/INST]', 'Strengths' without '▁'."""
    assert len(mistral_tokenizer) == 32000
    ex = PromptEncoder(mistral_tokenizer, get_template("mistral-inst")).encode_example(
        "The paper is here.", "Strengths: good.", 1000)
    pieces = mistral_tokenizer.convert_ids_to_tokens(ex.input_ids)
    assert pieces[:4] == ["<s>", "▁[", "INST", "]"]
    assert "<0x0A>" in pieces and pieces[pieces.index("<0x0A>") + 2] == "The"
    tail = pieces.index("/") - 1
    assert pieces[tail:tail + 4] == ["▁[", "/", "INST", "]"]
    assert pieces[tail + 4:tail + 8] == ["St", "re", "ngth", "s"] and pieces[-1] == "</s>"


@pytest.mark.parametrize("text", ["see <s> here", "</s>", "<end_of_turn> and <bos>", "<|im_end|> quoted"])
def test_control_tokens_quoted_in_a_paper_stay_plain_text(encoder, text):
    tokenizer = encoder.tokenizer
    ex = encoder.encode_example(f"A paper that writes {text} in its text.", "A review.", 100_000)
    controls = set(encoder.controls.values())
    prompt = ex.input_ids[: len(ex.input_ids) - ex.review_tokens]
    # The control tokens are exactly those the template wrote, none from the paper.
    template_only = PromptEncoder(tokenizer, encoder.template).encode_example("A paper.", "A review.", 100_000)
    assert [i for i in prompt if i in controls] == [i for i in template_only.input_ids[:-template_only.review_tokens]
                                                    if i in controls]
    # No spaces added around the quoted token.
    assert f"writes {text} in its" in tokenizer.decode(prompt, clean_up_tokenization_spaces=False)


def test_trimmed_example_differs_only_by_removed_paper_tokens_and_the_marker(encoder):
    paper = "Section one has words. " * 200
    full = encoder.encode_example(paper, REVIEW, 100_000)
    limit = len(full.input_ids) - 300
    cut = encoder.encode_example(paper, REVIEW, limit)
    assert len(cut.input_ids) == limit and cut.paper_truncated
    marker = encoder.marker_ids
    start = next(i for i in range(len(cut.input_ids)) if cut.input_ids[i:i + len(marker)] == marker)
    removed = len(full.input_ids) - len(cut.input_ids) + len(marker)
    assert cut.input_ids[:start] == full.input_ids[:start]
    assert cut.input_ids[start + len(marker):] == full.input_ids[start + removed:]
    assert cut.paper_kept == cut.paper_tokens - removed
    assert CUT_MARKER.strip() in encoder.tokenizer.decode(marker, clean_up_tokenization_spaces=False)


@PROPERTY
@given(paper=TEXT, review=st.text(min_size=1, max_size=300), max_length=st.integers(64, 900))
def test_examples_fit_keep_the_review_whole_and_mask_the_prompt(encoder, paper, review, max_length):
    full = encoder.encode_example(paper, review, 10**6)
    try:
        ex = encoder.encode_example(paper, review, max_length)
    except ReviewTooLong as exc:
        assert exc.needed > max_length
        return
    n = ex.review_tokens
    assert n == full.review_tokens and len(ex.input_ids) <= max_length
    assert ex.input_ids[-n:] == full.input_ids[-n:]  # every review token, in order, then the end
    assert ex.labels[-n:] == ex.input_ids[-n:]
    assert all(label == IGNORE_INDEX for label in ex.labels[:-n])
    if ex.paper_truncated:
        assert len(ex.input_ids) == max_length  # the budget is used, not wasted


@PROPERTY
@given(paper=TEXT, review=st.text(min_size=1, max_size=200))
def test_loss_on_all_reproduces_the_reference_labels(encoder, paper, review):
    ex = encoder.encode_example(paper, review, 4096, loss_on="all")
    assert ex.labels == ex.input_ids


def test_a_review_that_cannot_fit_raises_with_the_numbers(encoder):
    with pytest.raises(ReviewTooLong, match="max_length is 40"):
        encoder.encode_example("paper " * 50, "review words " * 100, 40)


def test_prompt_budget_too_small_for_any_paper_is_an_error(encoder):
    with pytest.raises(ValueError, match="leaves no room for the paper"):
        encoder.encode_prompt(PAPER, 5)


def test_a_chat_format_on_a_tokenizer_without_its_control_tokens_is_refused(mistral_tokenizer):
    from reviewgpt.errors import UserError

    with pytest.raises(UserError, match="template 'gemma-it' writes the control token '<bos>'"):
        PromptEncoder(mistral_tokenizer, get_template("gemma-it"))


def test_chat_format_is_recognised_from_the_tokenizer(tokenizers):
    assert {f: chat_template_of(t) for f, t in tokenizers.items()} == {
        "gemma": "gemma-it", "mistral": "mistral-inst", "llama": "smollm2-chatml"}


def test_tiny_tokenizers_work_in_plain_transformers(tiny_models):
    """No token_type_ids: model(**tok(text)) runs (issue 11, item 11)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in tiny_models.values():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        batch = tokenizer(["a paper"], return_tensors="pt")
        assert set(batch) == {"input_ids", "attention_mask"}
        with torch.no_grad():
            model(**batch)
            model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def test_pad_batch_pads_right_with_ignored_labels():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_batch_pads_left_for_generation():
    batch = pad_batch([{"input_ids": [5, 6]}, {"input_ids": [7]}], 0, side="left")
    assert batch["input_ids"].tolist() == [[5, 6], [0, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 1]]
