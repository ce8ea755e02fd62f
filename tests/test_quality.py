"""Quality figures that need no judge (issue 10, item 2): `eval`, `score`, `data show`, `.jsonl.gz`."""

import gzip
import json
import math

import pytest
import torch

from reviewgpt.cli import main
from reviewgpt.data.records import load_papers, load_records
from reviewgpt.errors import UserError
from reviewgpt.eval.likelihood import EvalSettings, batches_by_tokens, evaluate_reviews
from reviewgpt.eval.score import repetition, score_reviews
from reviewgpt.merge import merge
from reviewgpt.train.loop import train
from tests.util import skip_unless_bitsandbytes_quantizes_on_cpu, smollm2_recipe_on_cpu, write_jsonl


@pytest.fixture(scope="module")
def llama_run(tiny_llama, sample_file, tmp_path_factory):
    """A tiny Llama (ChatML, like SmolLM2) trained with the smollm2-135m recipe's layout on the CPU."""
    run = tmp_path_factory.mktemp("llama-run")
    train(smollm2_recipe_on_cpu(tiny_llama, max_steps=6, save_steps=6, max_new_tokens=24), sample_file, run)
    return run


def _by_hand(model_dir, records, template, max_length):
    """Mean review-token NLL from the plain model forward and CrossEntropy, one record at a time."""
    from reviewgpt.data.prompt import get_template
    from reviewgpt.data.tokenization import PromptEncoder
    from reviewgpt.models import load_for_inference

    loaded = load_for_inference(model_dir)
    encoder = PromptEncoder(loaded.tokenizer, get_template(template))
    total = count = 0.0
    for r in records:
        ex = encoder.encode_example(r.paper, r.review, max_length)
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1].float()
        labels = torch.tensor(ex.labels[1:])
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    return total / count, int(count)


def test_eval_of_a_base_model_equals_a_plain_forward_pass(tiny_llama, sample_file, tmp_path):
    records = load_records(sample_file).records[:5]
    summary = evaluate_reviews(tiny_llama, sample_file, EvalSettings(limit=5, max_length=600, batch_tokens=1300),
                               output=tmp_path / "rows.jsonl")
    expected, tokens = _by_hand(tiny_llama, records, "smollm2-chatml", 600)
    assert summary["template"] == "smollm2-chatml"  # recognised from the tokenizer's chat template
    assert summary["review_tokens"] == tokens and summary["records"] == 5
    assert summary["nll"] == pytest.approx(expected, rel=1e-4)
    assert summary["perplexity"] == pytest.approx(math.exp(expected), rel=1e-3)
    assert summary["papers_truncated"] > 0  # the paper is trimmed as in training, never the review
    low, high = summary["nll_ci95"]
    assert low <= summary["nll"] <= high
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sum(r["review_tokens"] for r in rows) == tokens


def test_eval_of_a_run_and_its_merge_agree_and_training_lowered_the_nll(llama_run, tiny_llama, sample_file,
                                                                         tmp_path):
    settings = EvalSettings(limit=6)
    base = evaluate_reviews(tiny_llama, sample_file, EvalSettings(limit=6, max_length=384))
    run = evaluate_reviews(llama_run, sample_file, settings)
    merged = evaluate_reviews(merge(llama_run, tmp_path / "merged", dtype="float32"), sample_file, settings)
    assert run["model_kind"] == "run" and merged["model_kind"] == "merged"
    assert run["max_length"] == merged["max_length"] == 384 and run["template"] == "smollm2-chatml"
    assert merged["nll"] == pytest.approx(run["nll"], abs=1e-4)
    assert run["nll"] < base["nll"]  # trained on these records: the reviews became likelier


def test_eval_cli_prints_one_json_object_last(tiny_llama, sample_file, capsys):
    assert main(["eval", "--model", str(tiny_llama), "--data", str(sample_file), "--limit", "2",
                 "--max-length", "700"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "nats/token" in out[0] and json.loads(out[-1])["records"] == 2


def test_eval_errors_are_one_line(tiny_gemma, tiny_llama, sample_file, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "none"), "--data", str(sample_file)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_llama), "--data", str(sample_file), "--max-length", "20"]) == 2
    assert "no review fits max_length=20" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", str(tiny_llama), "--data", str(sample_file), "--limit", "0"])
    assert exited.value.code == 2 and "argument --limit: must be >= 1, got 0" in capsys.readouterr().err


def test_eval_of_a_4bit_run_without_a_gpu_is_refused(tiny_llama, sample_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        evaluate_reviews(tiny_llama, sample_file, EvalSettings(limit=1, quantize=True))


def test_batches_respect_the_token_budget():
    lengths = [100, 900, 300, 300, 50, 1000]
    batches = batches_by_tokens(lengths, 1000)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 1000 or len(b) == 1 for b in batches)


def test_score_against_the_human_reviews(tmp_path, sample_file):
    records = load_records(sample_file).records
    papers = sorted({r.paper_id for r in records})
    first = next(r for r in records if r.paper_id == papers[0])
    candidates = [
        {"paper_id": papers[0], "review": first.review},  # a copy of one human review: ROUGE 1
        {"paper_id": papers[1], "review": "the the the the the the the the the the"},  # a loop
    ]
    write_jsonl(tmp_path / "c.jsonl", candidates)
    summary = score_reviews(tmp_path / "c.jsonl", sample_file, tmp_path / "score")
    per = {p["paper_id"]: p for p in summary["per_paper"]}
    assert per[papers[0]]["rouge1"] == pytest.approx(1.0) and per[papers[0]]["rougeL"] == pytest.approx(1.0)
    assert per[papers[1]]["repetition"] == pytest.approx(6 / 7) and per[papers[1]]["rouge2"] < 0.1
    assert summary["means"]["rouge1"]["ci95"] is not None and summary["papers_without_review"] == len(papers) - 2
    assert "ROUGE-L" in (tmp_path / "score" / "score.md").read_text()
    assert json.loads((tmp_path / "score" / "score.json").read_text())["papers"] == 2
    assert summary["endings"] is None and "Ended by themselves" not in (tmp_path / "score" / "score.md").read_text()


def test_score_counts_the_reviews_that_ended_by_themselves(tmp_path, sample_file):
    papers = sorted({r.paper_id for r in load_records(sample_file).records})
    reasons = ["stop", "length", "stop", None]  # as `reviewgpt review` writes them; None: another tool's row
    write_jsonl(tmp_path / "c.jsonl", [{"paper_id": pid, "review": "A review.", "finish_reason": reason}
                                       for pid, reason in zip(papers, reasons)])
    summary = score_reviews(tmp_path / "c.jsonl", sample_file, tmp_path / "score")
    assert summary["endings"] == {"ended_by_themselves": 2, "cut_at_the_token_limit": 1, "unknown": 1}
    page = (tmp_path / "score" / "score.md").read_text()
    assert "Ended by themselves: 2 of 4; 1 ran into the new-token limit" in page


def test_report_shows_the_scores(tmp_path, sample_file):
    from reviewgpt.eval.report import build_report

    records = load_records(sample_file).records
    write_jsonl(tmp_path / "c.jsonl", [{"paper_id": records[0].paper_id, "review": records[0].review}])
    score_reviews(tmp_path / "c.jsonl", sample_file, tmp_path / "run" / "score")
    page = build_report(tmp_path / "run").read_text()
    assert "## Scores (`score`)" in page and "| ROUGE-1 |" in page


def test_score_names_reviews_of_unknown_papers_and_duplicates(tmp_path, sample_file):
    write_jsonl(tmp_path / "c.jsonl", [{"paper_id": "nope", "review": "x"}])
    with pytest.raises(UserError, match="no paper of .* is in"):
        score_reviews(tmp_path / "c.jsonl", sample_file)
    write_jsonl(tmp_path / "d.jsonl", [{"paper_id": "a", "review": "x"}, {"paper_id": "a", "review": "y"}])
    with pytest.raises(UserError, match=r"d.jsonl:2: a second review of paper 'a'"):
        score_reviews(tmp_path / "d.jsonl", sample_file)


def test_repetition_counts_repeated_4grams():
    assert repetition("a b c d e f") == 0.0
    assert repetition("a b c d a b c d") == pytest.approx(1 / 5)


def test_gzip_data_files_are_read_everywhere(sample_file, tmp_path):
    gz = tmp_path / "sample.jsonl.gz"
    gz.write_bytes(gzip.compress(sample_file.read_bytes()))
    assert load_records(gz).records == [r.__class__(**{**r.__dict__, "source": r.source.replace(
        str(sample_file), str(gz))}) for r in load_records(sample_file).records]
    assert [p.id for p in load_papers(gz)] == [p.id for p in load_papers(sample_file)]
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable gzip file"):
        load_records(tmp_path / "bad.jsonl.gz")


def test_data_show_marks_the_part_without_loss(tiny_gemma, sample_file, capsys):
    assert main(["data", "show", str(sample_file), "--recipe", "tiny", "--tokenizer", str(tiny_gemma),
                 "--index", "1", "--max-length", "4096", "--json"]) == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert len(last["input_ids"]) == len(last["labels"]) and -100 in last["labels"]
    assert "same ids as the model's own tooling: yes" in out
    shown = out.split("-" * 80)[1]
    assert shown.lstrip("\n").startswith("<<<no loss>>><bos><start_of_turn>user")
    assert "<start_of_turn>model\n<<</no loss>>>" in shown
    assert main(["data", "show", str(sample_file), "--recipe", "tiny", "--tokenizer", str(tiny_gemma),
                 "--index", "999"]) == 2
    assert "--index 999" in capsys.readouterr().err


def test_nf4_merge_equals_the_adapter_on_the_nf4_round_trip_of_its_base(llama_run, tiny_llama, tmp_path):
    """--base-weights nf4 merges into the weights a QLoRA adapter was trained against."""
    skip_unless_bitsandbytes_quantizes_on_cpu()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reviewgpt.merge import nf4_round_trip

    merged = merge(llama_run, tmp_path / "nf4", dtype="float32", base_weights="nf4")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32)
    assert nf4_round_trip(base) == 2 * 7  # every linear layer of both decoder layers, not the LM head
    adapted = PeftModel.from_pretrained(base, str(llama_run)).eval()
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        expected = adapted(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert json.loads((merged / "reviewgpt.json").read_text())["base_weights"] == "nf4"


def test_batched_review_generation_writes_one_row_per_paper(llama_run, sample_file, tmp_path):
    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    # Greedy: the fast engine's sampled reviews are batch-independent too (tests/test_engine.py), the
    # fallback engine's (transformers' generate, torch < 2.1.1) are not.
    out = tmp_path / "reviews.jsonl"
    result = generate_reviews(llama_run, sample_file, out, GenerationSettings(limit=5, batch_size=3, temperature=0.0))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["written"] == 5 and len({r["paper_id"] for r in rows}) == 5
    assert result["max_input_tokens"] == 384 - 24  # the trained length minus the longest review
    assert all(r["generated_tokens"] <= 24 and r["template"] == "smollm2-chatml" for r in rows)
    single = tmp_path / "one-by-one.jsonl"
    generate_reviews(llama_run, sample_file, single, GenerationSettings(limit=5, batch_size=1, temperature=0.0))
    assert {r["paper_id"]: r["review"] for r in rows} == \
        {json.loads(line)["paper_id"]: json.loads(line)["review"] for line in single.read_text().splitlines()}


def test_repetition_penalty_reaches_generate(llama_run, sample_file, tmp_path):
    from reviewgpt.eval.generate import GenerationSettings, generate_reviews

    outputs = {}
    for penalty in (1.0, 50.0):
        out = tmp_path / f"r{penalty}.jsonl"
        generate_reviews(llama_run, sample_file, out, GenerationSettings(limit=2, repetition_penalty=penalty))
        outputs[penalty] = [json.loads(line)["review"] for line in out.read_text().splitlines()]
    assert outputs[1.0] != outputs[50.0]
