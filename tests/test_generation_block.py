"""A recipe's `generation:` block (issue 20): saved with the run and with its merge, applied by `review`
(not only reported in its summary), each `review` flag overriding its one option; a bad block is one
line naming the field."""

import json

import pytest
import yaml

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.eval.generate import GenerationSettings, generate_reviews
from reviewgpt.merge import merge
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from tests.util import smollm2_recipe_on_cpu

BLOCK = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3, "temperature": 0.8, "top_p": 0.9, "seed": 7}
GREEDY = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "temperature": 0.0, "top_p": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def block_run(tiny_llama, sample_file, tmp_path_factory):
    """A tiny Llama trained with the smollm2-135m recipe's layout and a generation block of its own."""
    run = tmp_path_factory.mktemp("block-run")
    train(smollm2_recipe_on_cpu(tiny_llama, max_steps=2, save_steps=2, max_new_tokens=16, generation=BLOCK),
          sample_file, run)
    return run


def reviews(model, papers, output, **options):
    summary = generate_reviews(model, papers, output, GenerationSettings(limit=3, engine="fast", **options))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return summary, {r["id"]: r["review"] for r in rows}


def test_the_block_is_saved_with_the_run_and_with_its_merge(block_run, tmp_path):
    saved = yaml.safe_load((block_run / "reviewgpt_recipe.yaml").read_text())
    assert saved["generation"] == BLOCK
    merged = merge(block_run, tmp_path / "merged", dtype="float32")
    assert json.loads((merged / "reviewgpt.json").read_text())["generation"] == BLOCK


def test_review_decodes_with_the_block_and_a_flag_overrides_only_its_option(block_run, sample_file, tmp_path):
    by_block, texts = reviews(block_run, sample_file, tmp_path / "block.jsonl")
    assert by_block["decoding"] == BLOCK
    _, spelled_out = reviews(block_run, sample_file, tmp_path / "flags.jsonl", **BLOCK)
    assert spelled_out == texts  # the block is what decoded, not only what the summary says

    greedy_block, greedy_texts = reviews(block_run, sample_file, tmp_path / "t0.jsonl", temperature=0.0)
    assert greedy_block["decoding"] == {**BLOCK, "temperature": 0.0}  # the penalty and n-gram ban stay
    _, plain_greedy = reviews(block_run, sample_file, tmp_path / "greedy.jsonl", **GREEDY)
    assert greedy_texts != plain_greedy  # the block's penalty and n-gram ban changed the greedy reviews
    assert texts != greedy_texts  # and its sampling changed them again


def test_a_merged_model_reviews_with_its_runs_block(block_run, sample_file, tmp_path):
    merged = merge(block_run, tmp_path / "merged", dtype="float32")
    summary, _ = reviews(merged, sample_file, tmp_path / "merged.jsonl")
    assert summary["decoding"] == BLOCK


def test_a_model_folder_without_a_recipe_decodes_greedy(tiny_llama, sample_file, tmp_path):
    summary, _ = reviews(tiny_llama, sample_file, tmp_path / "base.jsonl", max_new_tokens=8)
    assert summary["decoding"] == GREEDY


@pytest.mark.parametrize("block, message", [
    ("{temperature: -1}", "generation.temperature must be >= 0, got -1.0."),
    ("{top_p: 0}", "generation.top_p"),
    ("{top_k: 5}", "unknown recipe field(s) ['generation.top_k']"),
    ("3", "generation must be a mapping of option: value"),
])
def test_a_bad_block_is_refused_in_one_line_naming_the_field(tmp_path, capsys, block, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"family: llama\nmodel: x\ngeneration: {block}\n")
    assert main(["recipes", "--show", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(recipe) in err and message in err


def test_the_library_sets_or_refuses_the_block_through_overrides():
    recipe = load_recipe("smollm2-135m", {"generation": {"temperature": 0.0}})
    assert recipe.generation.temperature == 0.0 and recipe.generation.repetition_penalty == 1.1  # the rest kept
    with pytest.raises(UserError, match=r"^generation.top_p must be"):
        load_recipe("smollm2-135m", {"generation": {"top_p": 2}})
    unknown = r"unknown recipe field\(s\) \['learning_rat', 'generation.beam'\] in the overrides"
    with pytest.raises(UserError, match=unknown):
        load_recipe("smollm2-135m", {"learning_rat": 1e-4, "generation": {"beam": 2}})
