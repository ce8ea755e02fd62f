"""OOM self-recovery, by injecting a CUDA out-of-memory error into a tiny CPU training run."""

import json

import pytest
import torch
from transformers import TrainerCallback

from reviewgpt.errors import UserError
from reviewgpt.recipe import load_recipe
from reviewgpt.run import OOM_EVENTS_FILE, RECIPE_FILE
from reviewgpt.train.loop import train
from reviewgpt.train.oom import is_cuda_oom, smaller_batch


class OOMWhileBatch(TrainerCallback):
    """Raise CUDA OOM at `step` whenever the micro-batch is larger than `fits`."""

    def __init__(self, step, fits):
        self.step, self.fits, self.raised = step, fits, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.per_device_train_batch_size > self.fits:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def recipe(model_dir, **kw):
    values = {"model": str(model_dir), "max_steps": 4, "save_steps": 2, "logging_steps": 1, "max_seq_length": 384,
              "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    values.update(kw)
    return load_recipe("tiny", values)


def test_oom_halves_the_batch_and_resumes_from_the_checkpoint(tiny_gemma, sample_file, tmp_path):
    out = tmp_path / "run"
    inject = OOMWhileBatch(step=3, fits=1)
    summary = train(recipe(tiny_gemma), sample_file, out, callbacks=[inject])
    events = [json.loads(line) for line in (out / OOM_EVENTS_FILE).read_text().splitlines()]
    assert [e["from"] for e in events] == [[4, 1], [2, 2]] and [e["to"] for e in events] == [[2, 2], [1, 4]]
    assert events[0]["resume_from"].endswith("checkpoint-2") and inject.raised == 2
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 4
    saved = (out / RECIPE_FILE).read_text()
    assert "per_device_train_batch_size: 1" in saved and "gradient_accumulation_steps: 4" in saved
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 1


def test_oom_gives_up_kept_layers_before_halving_the_batch(tiny_gemma, sample_file, tmp_path):
    out = tmp_path / "run"
    inject = OOMWhileKeeping(step=3)
    summary = train(recipe(tiny_gemma, per_device_train_batch_size=2, gradient_checkpointing=True,
                           checkpoint_skip_layers=1), sample_file, out, callbacks=[inject])
    events = [json.loads(line) for line in (out / OOM_EVENTS_FILE).read_text().splitlines()]
    assert len(events) == 1 and events[0]["from"] == events[0]["to"] == [2, 1]  # same batch
    assert events[0]["checkpoint_skip_layers"] == [1, 0] and inject.raised == 1
    assert summary["global_step"] == 4 and "checkpoint_skip_layers: 0" in (out / RECIPE_FILE).read_text()


class OOMWhileKeeping(TrainerCallback):
    """Raise CUDA OOM at `step` while a layer is kept from recompute."""

    def __init__(self, step):
        self.step, self.raised = step, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from reviewgpt.train.speed.checkpointing import LayerCheckpointing, decoder_stack

        kept = isinstance(getattr(decoder_stack(model), "_gradient_checkpointing_func", None), LayerCheckpointing)
        if state.global_step == self.step and kept:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_oom_at_micro_batch_one_stops_clearly(tiny_gemma, sample_file, tmp_path):
    with pytest.raises(UserError, match="out of GPU memory at micro-batch 1"):
        train(recipe(tiny_gemma, per_device_train_batch_size=1), sample_file, tmp_path / "r",
              callbacks=[OOMWhileBatch(step=1, fits=0)])


def test_oom_recovery_off_and_other_errors_pass_through(tiny_gemma, sample_file, tmp_path):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train(recipe(tiny_gemma, oom_recovery=False), sample_file, tmp_path / "r",
              callbacks=[OOMWhileBatch(step=1, fits=0)])
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("before, processes, after", [
    ((3, 8), 1, (1, 24)), ((4, 1), 1, (2, 2)), ((6, 2), 1, (3, 4)),
    ((5, 3), 1, (1, 15)), ((7, 1), 1, (1, 7)),  # odd micro-batches: 2 x 8 = 16 and 3 x 3 = 9 before
    ((4, 2), 2, (2, 4)), ((6, 2), 2, (3, 4)),
])
def test_smaller_batch_keeps_the_effective_batch_exactly(before, processes, after):
    r = load_recipe("mistral-7b-instruct-v0.2", {"per_device_train_batch_size": before[0],
                                                 "gradient_accumulation_steps": before[1]})
    s = smaller_batch(r, processes)
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps) == after
    assert s.effective_batch_size == r.effective_batch_size
    assert smaller_batch(r.replace(per_device_train_batch_size=1)) is None


def test_oom_under_several_processes_stops_all_with_the_rerun_command(monkeypatch, tmp_path):
    from reviewgpt.recipe import load_recipe
    from reviewgpt.train.oom import with_oom_recovery

    monkeypatch.setenv("WORLD_SIZE", "2")
    calls = []

    def attempt(recipe, checkpoint):
        calls.append(recipe.per_device_train_batch_size)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    r = load_recipe("tiny", {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4})
    with pytest.raises(UserError, match=r"under 2 processes .* --per-device-train-batch-size 1 "
                                        r"--gradient-accumulation-steps 8: it resumes"):
        with_oom_recovery(attempt, r, tmp_path)
    assert calls == [2]  # no retry inside one rank
    with pytest.raises(UserError, match=r"--per-device-train-batch-size 2 --gradient-accumulation-steps 4 "
                                        r"--checkpoint-skip-layers 0: it resumes"):
        with_oom_recovery(attempt, r.with_speed(checkpoint_skip_layers=4), tmp_path)


def test_auto_kept_layers_are_a_number_before_the_first_attempt(tiny_gemma, sample_file, tmp_path, monkeypatch):
    """`checkpoint_skip_layers: auto` is planned once, before training: every attempt, its run files and OOM
    recovery read the number (recovery gives those layers up first, and records the number)."""
    import reviewgpt.train.loop as loop
    from reviewgpt.train.oom import with_oom_recovery

    seen = []

    def attempt(recipe, checkpoint):
        seen.append((recipe.speed.checkpoint_skip_layers, recipe.per_device_train_batch_size, checkpoint))
        if recipe.speed.checkpoint_skip_layers:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return {"ok": True}

    r = load_recipe("tiny", {"per_device_train_batch_size": 2, "checkpoint_skip_layers": "auto"})
    with pytest.raises(ValueError, match="'auto'"):  # the run resolves it before the first attempt
        with_oom_recovery(attempt, r, tmp_path)
    assert seen == []
    assert with_oom_recovery(attempt, r.with_speed(checkpoint_skip_layers=3), tmp_path) == {"ok": True}
    assert seen == [(3, 2, None), (0, 2, None)]
    event = json.loads((tmp_path / OOM_EVENTS_FILE).read_text())
    assert event["checkpoint_skip_layers"] == [3, 0] and event["from"] == event["to"] == [2, 1]

    planned = []  # through `train`: the planner's number (none kept without a GPU) reaches the attempts
    monkeypatch.setattr(loop, "with_oom_recovery", lambda fn, recipe, *a: planned.append(recipe) or {"ok": True})
    loop.train(recipe(tiny_gemma, checkpoint_skip_layers="auto"), sample_file, tmp_path / "run")
    assert [p.speed.checkpoint_skip_layers for p in planned] == [0]
