"""Runs and files you can trust: a resumed run finishes, a rerun adds nothing, a typo loses no file,
and a file-system error is one line (issue 19, items 1-5 and 15)."""

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import TrainerCallback

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.recipe import load_recipe
from reviewgpt.train.loop import train
from tests.util import train_losses, write_jsonl


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


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. A resumed run finishes although save_total_limit deleted the checkpoint it resumed from.
def test_a_resumed_run_finishes_when_its_checkpoint_was_rotated_away(tiny_gemma, sample_file, tmp_path):
    recipe = tiny(tiny_gemma, max_steps=6, save_steps=1, save_total_limit=1)
    straight = train(recipe, sample_file, tmp_path / "straight")
    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "run", callbacks=[CrashAtStep(3)])
    resumed = train(recipe, sample_file, tmp_path / "run")
    assert resumed["resumed_from"].endswith("checkpoint-2") and not (tmp_path / "run" / "checkpoint-2").exists()
    assert resumed["global_step"] == 6 and (tmp_path / "run" / "train_summary.json").is_file()
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "straight")


# 2. Rerunning a finished run trains nothing and rewrites nothing; a larger --max-steps continues it.
def test_a_finished_run_rerun_changes_nothing_and_a_larger_max_steps_continues_it(tiny_gemma, sample_file,
                                                                                  tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="reviewgpt")
    recipe = tiny(tiny_gemma, max_steps=5, save_steps=2)  # the last step is no save step: it saves anyway
    first = train(recipe, sample_file, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint-5").is_dir()
    before = snapshot(tmp_path / "run")
    again = train(recipe, sample_file, tmp_path / "run")
    assert again == first and snapshot(tmp_path / "run") == before
    assert "this run is finished (step 5 of 5" in caplog.text

    longer = train(tiny(tiny_gemma, max_steps=7, save_steps=2), sample_file, tmp_path / "run")
    assert longer["global_step"] == 7 and longer["resumed_from"].endswith("checkpoint-5")
    uninterrupted = train(tiny(tiny_gemma, max_steps=7, save_steps=2), sample_file, tmp_path / "seven")
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "seven")
    assert longer["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-6)

    with pytest.raises(UserError, match=r"has trained 7 steps and this command asks for 5; pass a larger"):
        train(recipe, sample_file, tmp_path / "run")


def test_a_run_killed_after_its_last_step_finishes_without_training_again(tiny_gemma, sample_file, tmp_path):
    recipe = tiny(tiny_gemma, max_steps=3, save_steps=2)
    done = train(recipe, sample_file, tmp_path / "run")
    adapter = (tmp_path / "run" / "adapter_model.safetensors").read_bytes()
    for name in ("train_summary.json", "adapter_model.safetensors", "loss_curve.png"):
        (tmp_path / "run" / name).unlink()  # as if killed while writing the final files
    finished = train(recipe, sample_file, tmp_path / "run")
    assert finished["global_step"] == 3 and finished["resumed_from"].endswith("checkpoint-3")
    assert finished["train_tokens"] == 0 and finished["train_loss"] == pytest.approx(done["train_loss"], rel=1e-6)
    assert (tmp_path / "run" / "adapter_model.safetensors").read_bytes() == adapter
    assert sorted(train_losses(tmp_path / "run")) == [1, 2, 3]


def test_epochs_that_do_not_fill_whole_steps_resume_on_the_same_samples(tiny_gemma, sample_file, tmp_path):
    # 16 records at 3 x 1: an epoch is 5.33 steps, so steps straddle epochs (transformers 4.38.2's own
    # resume counted whole epochs of 5 and trained other samples after a resume).
    recipe = tiny(tiny_gemma, max_steps=-1, num_train_epochs=2.0, per_device_train_batch_size=3,
                  gradient_accumulation_steps=1, save_steps=4)
    straight = train(recipe, sample_file, tmp_path / "straight")
    assert straight["global_step"] == 10  # floor(2 x 16 / 3)
    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "run", callbacks=[CrashAtStep(7)])
    train(recipe, sample_file, tmp_path / "run")
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "straight")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("step") == 8 and "loss" in r] == [1.5]  # 8 x 3 / 16


# 3. Resume checks that the folder is the same run, before anything is written.
def test_a_resume_with_other_data_or_settings_is_refused_and_nothing_is_rewritten(tiny_gemma, sample_file, tmp_path):
    recipe = tiny(tiny_gemma, max_steps=4, save_steps=2)
    with pytest.raises(Crash):
        train(recipe, sample_file, tmp_path / "run", callbacks=[CrashAtStep(3)])
    before = snapshot(tmp_path / "run")
    one = write_jsonl(tmp_path / "one.jsonl", [json.loads(sample_file.read_text().splitlines()[0])])
    with pytest.raises(UserError, match=r"holds a run trained with other settings: --data \(other records"):
        train(recipe, one, tmp_path / "run")
    with pytest.raises(UserError, match=r"lora_r \(8 in the run, 16 now\).* train into a new --output"):
        train(tiny(tiny_gemma, max_steps=4, save_steps=2, lora_r=16), sample_file, tmp_path / "run")
    with pytest.raises(UserError, match=r"--eval \(the run was trained without it\)"):
        train(recipe, sample_file, tmp_path / "run", do_eval=True)
    assert snapshot(tmp_path / "run") == before
    # What may change on resume does: the save cadence, the length of the run, the micro-batch split.
    summary = train(tiny(tiny_gemma, max_steps=6, save_steps=3, per_device_train_batch_size=1,
                         gradient_accumulation_steps=2), sample_file, tmp_path / "run")
    assert summary["global_step"] == 6 and summary["resumed_from"].endswith("checkpoint-2")


def test_a_run_that_fails_before_training_leaves_no_file(tiny_gemma, sample_file, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_gemma, broken)
    (broken / "model.safetensors").unlink()  # the tokenizer loads, the weights do not
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises, nothing may be written
        train(tiny(broken, max_steps=1), sample_file, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# 4. Typos do not destroy data.
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tiny_gemma, sample_file, tmp_path,
                                                                          capsys):
    data = tmp_path / "papers.jsonl"
    data.write_bytes(sample_file.read_bytes())
    original = data.read_bytes()
    assert main(["review", "--model", str(tiny_gemma), "--papers", str(data), "--output", str(data)]) == 2
    assert "--output" in capsys.readouterr().err and data.read_bytes() == original
    assert main(["data", "check", str(data), "--recipe", "tiny", "--tokenizer", str(tiny_gemma), "--rejects",
                 str(data)]) == 2
    assert "--rejects" in capsys.readouterr().err and data.read_bytes() == original
    assert main(["data", "prepare", str(tmp_path / "papers.jsonl"), "--output", str(tmp_path)]) == 0
    capsys.readouterr()
    moved = tmp_path / "train.jsonl"  # prepare's own output as its input, in the same folder
    kept = moved.read_bytes()
    assert main(["data", "prepare", str(moved), "--output", str(tmp_path)]) == 2
    assert "is also the data file" in capsys.readouterr().err and moved.read_bytes() == kept


def test_review_refuses_a_foreign_file_and_keeps_it_whole(tiny_gemma, sample_file, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nlast line without a newline")
    code = main(["review", "--model", str(tiny_gemma), "--papers", str(sample_file), "--output", str(notes),
                 "--limit", "1", "--max-new-tokens", "4"])
    assert code == 2 and "notes.txt:1: not a review line" in capsys.readouterr().err
    assert notes.read_text() == "my notes\nlast line without a newline"


def test_train_refuses_a_folder_of_other_files_naming_the_first(tiny_gemma, sample_file, tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("my project")
    (folder / "notes.txt").write_text("keep me")
    code = main(["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file),
                 "--output", str(folder), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "holds README.md, which no reviewgpt run writes" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "notes.txt"]
    assert (folder / "README.md").read_text() == "my project"


def test_review_does_not_mix_two_models_in_one_file(tiny_gemma, tiny_mistral, sample_file, tmp_path, capsys):
    out = tmp_path / "reviews.jsonl"
    common = ["--papers", str(sample_file), "--output", str(out), "--limit", "1", "--max-new-tokens", "4"]
    assert main(["review", "--model", str(tiny_gemma), *common]) == 0
    written = out.read_bytes()
    assert main(["review", "--model", str(tiny_gemma), *common]) == 0  # same model: nothing to do
    capsys.readouterr()
    assert main(["review", "--model", str(tiny_mistral), *common]) == 2
    assert "a review by another model" in capsys.readouterr().err and out.read_bytes() == written


def test_merge_refuses_an_input_or_a_foreign_folder_and_skips_a_merge_already_done(tiny_gemma, sample_file,
                                                                                   tmp_path, capsys):
    train(tiny(tiny_gemma, max_steps=1), sample_file, tmp_path / "run")
    assert main(["merge", str(tmp_path / "run"), "--output", str(tmp_path / "run")]) == 2
    assert "is also the adapter folder" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("x")
    assert main(["merge", str(tmp_path / "run"), "--output", str(other), "--dtype", "float32"]) == 2
    assert "holds data.txt" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "run"), "--output", str(merged), "--dtype", "float32"]) == 0
    before = snapshot(merged)
    assert main(["merge", str(tmp_path / "run"), "--output", str(merged), "--dtype", "float32"]) == 0
    assert snapshot(merged) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


# 5. File-system errors are one line naming the path, exit 2.
def test_an_output_that_is_an_existing_file_or_a_missing_rejects_folder(tiny_gemma, sample_file, tmp_path, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    code = main(["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file),
                 "--output", str(existing), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "a-file is a file; pass a folder" in err and len(err.splitlines()) == 1
    code = main(["data", "prepare", str(sample_file), "--output", str(existing)])
    assert code == 2 and "a-file is a file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(sample_file.read_text() + '{"paper": "no review"}\n')
    rejects = tmp_path / "new" / "folder" / "rejects.jsonl"
    assert main(["data", "check", str(bad), "--recipe", "tiny", "--tokenizer", str(tiny_gemma),
                 "--rejects", str(rejects)]) == 1
    assert "no review" in rejects.read_text()


def _mount(point: Path, options: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    made = []

    def mount(point, options):
        if not _mount(point, options):
            pytest.skip("needs root and mount (tmpfs) to make a read-only or a full disk")
        made.append(point)
        return point

    yield mount
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_read_only_disk_is_one_line_for_every_command(tiny_gemma, sample_file, tmp_path, mounts, capsys):
    ro = mounts(tmp_path / "ro", "ro,size=1m")
    commands = {
        "train": ["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file),
                  "--output", str(ro / "run"), "--max-steps", "1"],
        "data prepare": ["data", "prepare", str(sample_file), "--output", str(ro / "prepared")],
        "review": ["review", "--model", str(tiny_gemma), "--papers", str(sample_file), "--output",
                   str(ro / "reviews.jsonl"), "--limit", "1", "--max-new-tokens", "2"],
        "quickstart": ["quickstart", str(ro / "qs")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "read-only; pass a path on a writable disk" in err[0], (name, err)
        assert str(ro) in err[0], (name, err)


def test_a_full_disk_is_one_line_and_the_rerun_skips_the_partial_checkpoint(tiny_gemma, sample_file, tmp_path,
                                                                            mounts, capsys):
    disk = mounts(tmp_path / "disk", "size=600k")
    argv = ["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file), "--output",
            str(disk / "run"), "--max-steps", "4", "--save-steps", "1", "--logging-steps", "1",
            "--max-seq-length", "384", "--lora-r", "2"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reviewgpt")]  # no progress bar
    assert len(err) == 1 and "no space left on the disk" in err[0] and "run the same command again" in err[0], err
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    assert main(argv) == 0
    summary = json.loads((disk / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and not list((disk / "run").glob("tmp-checkpoint-*"))
    straight = train(tiny(tiny_gemma, max_steps=4, save_steps=1, lora_r=2), sample_file, tmp_path / "straight")
    assert train_losses(disk / "run") == train_losses(tmp_path / "straight") and straight["global_step"] == 4


# 15. `data prepare` that fails leaves the folder as it was.
def test_prepare_that_fails_on_a_review_leaves_no_file(tiny_gemma, sample_file, tmp_path, capsys):
    records = [json.loads(line) for line in sample_file.read_text().splitlines()]
    records[-1]["review"] = "Far too long a review. " * 400
    data = write_jsonl(tmp_path / "d.jsonl", records)
    code = main(["data", "prepare", str(data), "--output", str(tmp_path / "out"), "--tokenizer", str(tiny_gemma),
                 "--max-length", "256", "--llamafactory-template", "gemma"])
    assert code == 2 and "review" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
