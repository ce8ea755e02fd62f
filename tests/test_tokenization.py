import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewgpt.prompt import get_template
from reviewgpt.tokenization import IGNORE_INDEX, PromptEncoder, ReviewTooLong, pad_batch

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=1500)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _review_ids(encoder, review):
    return encoder.content_ids(review) + encoder.end_ids


@pytest.fixture(scope="module", params=[("gemma", "gemma-it"), ("gemma", "alpaca-reference"),
                                        ("mistral", "mistral-inst"), ("mistral", "alpaca")])
def encoder(request, gemma_tokenizer, mistral_tokenizer):
    family, template = request.param
    tokenizer = gemma_tokenizer if family == "gemma" else mistral_tokenizer
    return PromptEncoder(tokenizer, get_template(template))


@PROPERTY
@given(paper=TEXT, review=st.text(min_size=1, max_size=300), max_length=st.integers(64, 900))
def test_examples_fit_keep_the_review_whole_and_mask_the_prompt(encoder, paper, review, max_length):
    review_ids = _review_ids(encoder, review)
    try:
        ex = encoder.encode_example(paper, review, max_length)
    except ReviewTooLong:
        assert encoder.fixed_length() + len(review_ids) + len(encoder.marker_ids) + 1 > max_length
        return
    n = len(review_ids)
    assert len(ex.input_ids) <= max_length
    assert ex.input_ids[-n:] == review_ids  # every review token, in order, then end + EOS
    assert ex.labels[-n:] == review_ids
    assert all(label == IGNORE_INDEX for label in ex.labels[:-n])
    assert ex.input_ids[0] == encoder.tokenizer.bos_token_id
    assert ex.input_ids.count(encoder.tokenizer.bos_token_id) == 1
    if ex.paper_truncated:
        prompt = ex.input_ids[:-n]
        assert prompt[len(prompt) - len(encoder.tail_ids) - len(encoder.marker_ids):-len(encoder.tail_ids) or None] \
            == encoder.marker_ids
        assert len(ex.input_ids) >= max_length - len(encoder.marker_ids)  # the budget is used, not wasted


@PROPERTY
@given(paper=TEXT, review=st.text(min_size=1, max_size=200))
def test_loss_on_all_reproduces_the_reference_labels(encoder, paper, review):
    ex = encoder.encode_example(paper, review, 4096, loss_on="all")
    assert ex.labels == ex.input_ids


def test_short_examples_are_not_cut(encoder):
    ex = encoder.encode_example("A short paper.", "A short review.", 2048)
    assert not ex.paper_truncated and ex.paper_kept == ex.paper_tokens


def test_a_review_that_cannot_fit_raises_with_the_numbers(encoder):
    with pytest.raises(ReviewTooLong, match="max_length is 40"):
        encoder.encode_example("paper " * 50, "review words " * 100, 40)


def test_prompt_for_generation_matches_the_training_prompt(encoder):
    paper = "Section one. " * 200
    ex = encoder.encode_example(paper, "Fine.", 300)
    ids, paper_tokens, kept = encoder.encode_prompt(paper, len(ex.input_ids) - ex.review_tokens)
    assert ids == ex.input_ids[: -ex.review_tokens]
    assert kept < paper_tokens


def test_pad_batch_pads_right_with_ignored_labels():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_real_mistral_tokenizer_has_its_specials(mistral_tokenizer):
    assert len(mistral_tokenizer) == 32000
    assert (mistral_tokenizer.bos_token, mistral_tokenizer.eos_token) == ("<s>", "</s>")
    enc = PromptEncoder(mistral_tokenizer, get_template("mistral-inst"))
    assert enc.head_ids[0] == 1 and enc.end_ids == [2]  # "</s>" in the text is the EOS id, not three pieces


@pytest.mark.parametrize("text", ["<bos>", "</s>", "<end_of_turn>", "see <eos> and <s> here"])
def test_control_tokens_quoted_in_a_paper_or_review_stay_plain_text(encoder, text):
    tokenizer = encoder.tokenizer
    control = {tokenizer.bos_token_id, tokenizer.eos_token_id, *tokenizer.added_tokens_encoder.values()}
    ids = encoder.content_ids(text)
    assert not control & set(ids)
    assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")
