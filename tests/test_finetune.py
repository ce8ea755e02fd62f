"""finetune: qlora | lora | full, and the best checkpoint by held-out loss (issue 21 items 1 and 2)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from tests.util import train_losses


class Crash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


def tiny(model_dir, **overrides):
    values = {"model": str(model_dir), "max_steps": 4, "save_steps": 2, "logging_steps": 1, "max_seq_length": 384}
    return load_recipe("tiny", {**values, **overrides})


def full(model_dir, **overrides):
    return tiny(model_dir, finetune="full", learning_rate=1e-3, **overrides)


def test_full_fine_tuning_trains_every_weight_and_lowers_the_loss(tiny_gemma, sample_file, tmp_path):
    summary = train(full(tiny_gemma, max_steps=8, save_steps=4), sample_file, tmp_path / "run")
    losses = train_losses(tmp_path / "run")
    assert summary["global_step"] == 8 and losses[8] < losses[1] - 0.1, losses
    assert summary["train_tokens"] > 0  # counted at the forward that chunked_loss replaced on this very model
    run = tmp_path / "run"
    assert not (run / "adapter_config.json").exists() and (run / "config.json").is_file()
    base, trained = load_file(tiny_gemma / "model.safetensors"), load_file(run / "model.safetensors")
    assert trained.keys() == base.keys()
    unchanged = [k for k in base if torch.equal(base[k], trained[k])]
    assert unchanged == [], f"every weight trains in a full fine-tune: {unchanged}"
    assert trained["model.embed_tokens.weight"].dtype == base["model.embed_tokens.weight"].dtype


def test_a_full_run_resumes_bit_identically(tiny_gemma, sample_file, tmp_path):
    recipe = full(tiny_gemma, max_steps=5, save_steps=2)
    train(recipe, sample_file, tmp_path / "straight")
    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "run", callbacks=[CrashAtStep(3)])
    resumed = train(recipe, sample_file, tmp_path / "run")
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "straight")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_merge_of_a_full_run_refuses_politely_and_review_and_eval_load_it(tiny_gemma, sample_file, tmp_path,
                                                                          capsys):
    train(full(tiny_gemma, max_steps=2), sample_file, tmp_path / "run")
    assert main(["merge", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert "full fine-tune" in err and "nothing was copied" in err and not (tmp_path / "merged").exists()
    assert main(["review", "--model", str(tmp_path / "run"), "--papers", str(sample_file), "--output",
                 str(tmp_path / "reviews.jsonl"), "--limit", "1", "--max-new-tokens", "4"]) == 0
    row = json.loads((tmp_path / "reviews.jsonl").read_text())
    assert row["template"] == "gemma-it"  # the run's own template, read from its recipe
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(sample_file), "--limit", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["nll"] > 0


def test_the_planner_counts_a_full_fine_tune_and_refuses_a_7b_one_on_one_gpu():
    from reviewgpt.train.memory import ARCHITECTURES, predict_recipe
    from reviewgpt.train.plan import check_fits

    gemma = load_recipe("gemma-7b-it").with_speed(checkpoint_skip_layers=0)  # a number, as a run leaves it
    arch = ARCHITECTURES["gemma-7b"]
    qlora = predict_recipe(gemma, arch, 8192, 1)
    whole = predict_recipe(gemma.replace(finetune="full"), arch, 8192, 1)
    params = arch.linear_params + arch.vocab * arch.hidden
    # fp32 weights, fp32 gradients, two fp32 Adam states, autocast's bf16 copy: 18 bytes a weight at least
    assert whole["allocated_gib"] > params * 18 / 2**30 > 3 * qlora["allocated_gib"]
    with pytest.raises(UserError, match=r"needs ~\d+\.\d GiB, more than the .* GiB usable on this 141 GiB GPU"):
        check_fits(gemma.replace(finetune="full"), 8192, gpu_mem_gib=141)
    assert check_fits(gemma, 8192, gpu_mem_gib=141)  # the same recipe as QLoRA fits


def _eval_rows(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()
            if "eval_loss" in json.loads(line)]


def diverging_data(path, sample_file, eval_fraction=0.25, seed=42):
    """The sample's papers with one review text for the training papers and another for the held-out
    ones: learning the first makes the second less likely, so the held-out loss rises as training goes on."""
    from reviewgpt.data.records import load_records, split_by_paper
    from tests.util import write_jsonl

    records = load_records(sample_file).records
    _, held_out = split_by_paper(records, eval_fraction, seed)
    held = {r.paper_id for r in held_out}
    rows = [{"id": r.id, "paper_id": r.paper_id, "paper": r.paper,
             "review": ("Zebra violins orbit quietly near purple lighthouses." if r.paper_id in held else
                        "The method is novel and the experiments are convincing.")}
            for r in records]
    return write_jsonl(path, rows)


def test_with_eval_the_run_keeps_its_best_checkpoint_and_says_which(tiny_gemma, sample_file, tmp_path):
    data = diverging_data(tmp_path / "d.jsonl", sample_file)
    recipe = tiny(tiny_gemma, max_steps=8, save_steps=100, eval_steps=2, eval_fraction=0.25, learning_rate=0.2)
    summary = train(recipe, data, tmp_path / "run", do_eval=True)
    evals = _eval_rows(tmp_path / "run")
    assert [r["step"] for r in evals] == [2, 4, 6, 8]  # every eval_steps, and the last step
    best = min(evals, key=lambda r: r["eval_loss"])
    assert summary["best_step"] == best["step"] and summary["best_eval_loss"] == pytest.approx(best["eval_loss"])
    assert best["step"] < 8, f"the setup should make the last checkpoint worse than an earlier one: {evals}"
    chosen = tmp_path / "run" / f"checkpoint-{best['step']}" / "adapter_model.safetensors"
    assert (tmp_path / "run" / "adapter_model.safetensors").read_bytes() == chosen.read_bytes()


def test_early_stopping_stops_after_patience_evaluations_without_improvement_and_stays_finished(
        tiny_gemma, sample_file, tmp_path):
    data = diverging_data(tmp_path / "d.jsonl", sample_file)
    recipe = tiny(tiny_gemma, max_steps=20, save_steps=100, eval_steps=1, eval_fraction=0.25, learning_rate=0.2,
                  early_stopping_patience=2)
    summary = train(recipe, data, tmp_path / "run", do_eval=True)
    evals = _eval_rows(tmp_path / "run")
    losses = [r["eval_loss"] for r in evals]
    best_at = losses.index(min(losses))
    assert summary["stopped_early"] and summary["global_step"] < 20
    assert len(losses) == best_at + 1 + 2  # two evaluations after the best, then it stopped
    assert summary["best_step"] == evals[best_at]["step"]
    again = train(recipe, data, tmp_path / "run", do_eval=True)
    assert again == summary  # finished: nothing trained, nothing rewritten
