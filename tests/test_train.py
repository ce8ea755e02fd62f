import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from reviewgpt.errors import UserError
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from reviewgpt.train.resume import newest_complete_checkpoint
from tests.util import train_losses, write_jsonl


class CaptureModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


class Crash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


CHAT_FORMAT = {"gemma": "gemma-it", "mistral": "mistral-inst", "llama": "smollm2-chatml"}


def tiny_recipe(family, model_dir, **overrides):
    values = {"family": family, "model": str(model_dir), "max_steps": 3, "save_steps": 2, "logging_steps": 1,
              "max_seq_length": 384, "learning_rate": 1e-2, "template": CHAT_FORMAT[family]}
    values.update(overrides)
    return load_recipe("tiny", values)


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_three_steps_change_lora_weights_and_leave_the_base_alone(family, tiny_models, sample_file, tmp_path):
    model_dir = tiny_models[family]
    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    capture = CaptureModel()
    summary = train(tiny_recipe(family, model_dir), sample_file, tmp_path / "run", callbacks=[capture])
    assert summary["global_step"] == 3 and summary["train_records"] == 16

    trained = dict(capture.model.named_parameters())
    lora_b = [p for n, p in trained.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"
    for name, param in trained.items():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach().cpu(), base[key]), f"{key} changed"

    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").is_file() and (run / "adapter_config.json").is_file()
    assert (run / "tokenizer_config.json").is_file() and (run / "reviewgpt_recipe.yaml").is_file()
    assert (run / "loss_curve.png").stat().st_size > 1000
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]


def test_rerun_after_a_crash_resumes_at_the_right_step_with_the_same_loss(tiny_gemma, sample_file, tmp_path):
    recipe = tiny_recipe("gemma", tiny_gemma, max_steps=5, save_steps=2)
    straight = train(recipe, sample_file, tmp_path / "straight")
    assert straight["resumed_from"] is None

    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "crashed", callbacks=[CrashAtStep(3)])
    assert newest_complete_checkpoint(tmp_path / "crashed").name == "checkpoint-2"
    resumed = train(recipe, sample_file, tmp_path / "crashed")  # the same command again

    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 5
    expected, got = train_losses(tmp_path / "straight"), train_losses(tmp_path / "crashed")
    assert sorted(got) == [1, 2, 3, 4, 5]  # the crashed run's step 3 was dropped and redone
    for step in (3, 4, 5):
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def test_the_same_command_trains_the_same_adapter(tiny_gemma, sample_file, tmp_path):
    from safetensors.torch import load_file

    recipe = tiny_recipe("gemma", tiny_gemma, max_steps=2)
    train(recipe, sample_file, tmp_path / "a")
    torch.rand(1000)  # whatever ran before must not change the LoRA initialisation
    train(recipe, sample_file, tmp_path / "b")
    a, b = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


def test_incomplete_checkpoints_are_ignored(tmp_path):
    complete = tmp_path / "checkpoint-2"
    complete.mkdir()
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        (complete / name).write_text("x")
    cut_short = tmp_path / "checkpoint-4"
    cut_short.mkdir()
    (cut_short / "adapter_model.safetensors").write_text("x")
    assert newest_complete_checkpoint(tmp_path) == complete
    assert newest_complete_checkpoint(tmp_path / "checkpoint-4") is None


def test_a_review_that_cannot_fit_stops_or_is_skipped_and_counted(tiny_gemma, tmp_path):
    rows = [{"paper": "A paper. " * 80, "review": "Good work."},
            {"paper": "Another paper.", "review": "Too long. " * 400}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=r"d.jsonl:2: the review needs \d+ tokens .* --on-review-too-long skip"):
        train(tiny_recipe("gemma", tiny_gemma, max_seq_length=256), data, tmp_path / "a")
    summary = train(tiny_recipe("gemma", tiny_gemma, max_seq_length=256, on_review_too_long="skip", max_steps=1),
                    data, tmp_path / "b")
    assert summary["reviews_skipped"] == 1 and summary["train_records"] == 1 and summary["papers_truncated"] == 1


def test_eval_split_is_evaluated_and_logged(tiny_gemma, sample_file, tmp_path):
    summary = train(tiny_recipe("gemma", tiny_gemma, max_steps=2, eval_steps=1, eval_fraction=0.25), sample_file,
                    tmp_path / "run", do_eval=True)
    assert summary["eval_records"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r for r in rows)


def test_invalid_records_stop_training_or_go_to_rejects(tiny_gemma, sample_file, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(sample_file.read_text() + '{"paper": "only a paper"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:17: field 'review'"):
        train(tiny_recipe("gemma", tiny_gemma), data, tmp_path / "a")
    summary = train(tiny_recipe("gemma", tiny_gemma, max_steps=1), data, tmp_path / "b", skip_invalid=True)
    assert summary["invalid"] == 1
    assert "only a paper" in (tmp_path / "b" / "rejects.jsonl").read_text()


def test_a_resumed_run_reports_the_mean_loss_over_all_its_steps(tiny_gemma, sample_file, tmp_path):
    # logging_steps 3 does not fall on the checkpoint at step 2: its losses must still be counted.
    recipe = tiny_recipe("gemma", tiny_gemma, max_steps=5, save_steps=2, logging_steps=3)
    straight = train(recipe, sample_file, tmp_path / "straight")
    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "crashed", callbacks=[CrashAtStep(3)])
    resumed = train(recipe, sample_file, tmp_path / "crashed")
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-3)


class RecordBatches:
    """Wraps the run's collator: the examples of every micro-batch, in order."""

    def __init__(self, monkeypatch):
        from reviewgpt.train.dataset import PadCollator

        self.seen = []
        collate = PadCollator.__call__

        def record(collator, features):
            self.seen.append([tuple(f["input_ids"]) for f in features])
            return collate(collator, features)

        monkeypatch.setattr(PadCollator, "__call__", record)

    def samples(self):
        return [example for batch in self.seen for example in batch]


def test_resume_at_another_micro_batch_keeps_the_effective_batch_and_the_sample_order(
        tiny_gemma, sample_file, tmp_path, monkeypatch):
    big = tiny_recipe("gemma", tiny_gemma, max_steps=4, save_steps=2, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1)
    straight = RecordBatches(monkeypatch)
    train(big, sample_file, tmp_path / "straight")
    with pytest.raises(Crash):
        train(big, sample_file, tmp_path / "crashed", callbacks=[CrashAtStep(3)])

    # The rerun a multi-GPU OOM message advises: half the micro-batch, twice the accumulation.
    small = tiny_recipe("gemma", tiny_gemma, max_steps=4, save_steps=2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=2)
    rerun = RecordBatches(monkeypatch)
    summary = train(small, sample_file, tmp_path / "crashed")
    assert summary["global_step"] == 4 and summary["resumed_from"].endswith("checkpoint-2")
    assert {len(batch) for batch in rerun.seen} == {2}  # the new micro-batch, not the checkpoint's 4
    assert rerun.samples()[:8] == straight.samples()[8:16]  # steps 3 and 4 saw the same samples

    # Another effective batch would skip the wrong samples: refused in one sentence.
    other = tiny_recipe("gemma", tiny_gemma, max_steps=6, save_steps=2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=1)
    with pytest.raises(UserError, match=r"effective batch of 4 \(2 x 2 accumulation\) and this run asks for 2 "
                                        r"\(2 x 1\).* pass --gradient-accumulation-steps 2"):
        train(other, sample_file, tmp_path / "crashed")


def test_the_run_folder_records_the_base_model_as_an_absolute_path(tiny_gemma, sample_file, tmp_path, monkeypatch):
    import shutil

    from reviewgpt.merge import merge

    shutil.copytree(tiny_gemma, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    train(tiny_recipe("gemma", "base", max_steps=1), sample_file, "run")
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert (merge(tmp_path / "run", "merged", dtype="float32") / "config.json").is_file()


def test_report_to_tensorboard_writes_the_logged_losses(tiny_gemma, sample_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_recipe("gemma", tiny_gemma, max_steps=2, report_to=("tensorboard",)), sample_file, tmp_path / "run")
    events = list((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard event files go to OUTPUT/runs"
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    logged = {e.step: e.value for e in board.Scalars("train/loss")}
    assert logged == pytest.approx(train_losses(tmp_path / "run"), rel=1e-4)


def test_runs_stay_offline_by_default_and_a_missing_integration_is_one_sentence(tiny_gemma, sample_file, tmp_path):
    train(tiny_recipe("gemma", tiny_gemma, max_steps=1), sample_file, tmp_path / "run")
    assert not (tmp_path / "run" / "runs").exists()
    with pytest.raises(UserError, match="--report-to clearml needs the clearml package"):
        train(tiny_recipe("gemma", tiny_gemma, max_steps=1, report_to=("clearml",)), sample_file, tmp_path / "c")


def test_tokens_per_second_counts_the_tokens_trained_on_and_the_run_order_ends_at_the_last_step(
        tiny_gemma, sample_file, tmp_path, monkeypatch):
    # Tokens are counted at the model (logs.TrainedTokens): accelerate's DataLoader collates one
    # micro-batch ahead of the one trained on. The run's order (train.dataset.run_order) ends at the
    # last step, so nothing beyond it is even collated.
    seen = RecordBatches(monkeypatch)
    summary = train(tiny_recipe("gemma", tiny_gemma, max_steps=2, per_device_train_batch_size=2,
                                gradient_accumulation_steps=2), sample_file, tmp_path / "run")
    trained = seen.samples()
    assert len(trained) == 8  # 2 steps x 2 accumulation x 2 records
    assert summary["train_tokens"] == sum(len(ids) for ids in trained)
