import pytest

import reviewgpt
from reviewgpt.data.prompt import TEMPLATES, make_formatting_func

REFERENCE_TEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.### Instruction:You are a professional machine "
    "learning conference reviewer who reviews a given paper and considers 4 criteria: ** importance and "
    "novelty **, ** potential reasons for acceptance **, ** potential reasons for rejection **, and ** "
    "suggestions for improvement **. The given paper is as follows.### Input:{paper}### Response:{review}"
)


def test_formatting_func_reproduces_reference_text_byte_for_byte():
    out = reviewgpt.formatting_func({"input": ["P"], "output": ["R"]})
    assert out == [REFERENCE_TEXT.format(paper="P", review="R")]


def test_formatting_func_takes_a_batch_of_paper_review_records():
    out = reviewgpt.formatting_func({"paper": ["A", "B"], "review": ["x", "y"]})
    assert out == [REFERENCE_TEXT.format(paper="A", review="x"), REFERENCE_TEXT.format(paper="B", review="y")]


def test_formatting_func_single_example_returns_a_string_for_packing():
    assert reviewgpt.formatting_func({"input": "P", "output": "R"}) == REFERENCE_TEXT.format(paper="P", review="R")


def test_formatting_func_names_the_missing_column():
    with pytest.raises(KeyError, match="output"):
        reviewgpt.formatting_func({"input": ["P"]})


def test_gemma_template_is_gemma_chat_format_without_system_role():
    text = make_formatting_func("gemma-it")({"input": ["P"], "output": ["R"]})[0]
    assert text == (f"<bos><start_of_turn>user\n{reviewgpt.INSTRUCTION}\n\nP<end_of_turn>\n"
                    "<start_of_turn>model\nR<end_of_turn>\n")
    assert "system" not in text


def test_mistral_template_is_inst_format():
    text = make_formatting_func("mistral-inst")({"input": ["P"], "output": ["R"]})[0]
    assert text == f"<s>[INST] {reviewgpt.INSTRUCTION}\n\nP [/INST]R</s>"


def test_every_template_names_the_four_criteria():
    for template in TEMPLATES.values():
        head = template.head.lower()
        for words in ("importance and novelty", "reasons for acceptance", "reasons for rejection",
                      "suggestions for improvement"):
            assert words in head, (template.name, words)


def test_chat_templates_strip_the_paper_and_review_as_gemma_does():
    text = make_formatting_func("smollm2-chatml")({"input": ["  P \n"], "output": ["\nR  "]})[0]
    assert text.endswith("\n\nP<|im_end|>\n<|im_start|>assistant\nR<|im_end|>\n")


def test_unknown_template_is_a_user_error():
    with pytest.raises(reviewgpt.UserError, match="unknown template 'chatml'"):
        make_formatting_func("chatml")
