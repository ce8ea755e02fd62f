import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reviewgpt.cli import main
from reviewgpt.errors import UserError
from reviewgpt.train import distributed
from tests.util import train_losses


def test_effective_batch_is_kept_across_processes():
    assert distributed.accumulation_per_process(1, 16, 1) == 16
    assert distributed.accumulation_per_process(1, 16, 2) == 8
    assert distributed.accumulation_per_process(2, 8, 8) == 1
    with pytest.raises(UserError, match=r"effective batch is 2 x 8 = 16, which 3 processes cannot share"):
        distributed.accumulation_per_process(2, 8, 3)


def test_a_single_process_with_several_gpus_stays_on_one(monkeypatch, caplog):
    class Args:
        _n_gpu = 2

        @property
        def n_gpu(self):
            return self._n_gpu

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = Args()
    distributed.single_gpu_guard(args)
    assert args.n_gpu == 1 and "reviewgpt train --gpus 2" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "2")  # under DDP each process already has one GPU
    args = Args()
    distributed.single_gpu_guard(args)
    assert args.n_gpu == 2


def test_trainer_would_not_wrap_in_data_parallel(monkeypatch, tmp_path):
    """The guard acts on the attribute transformers 4.38.2's Trainer reads before nn.DataParallel."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args._n_gpu = 4  # as if four GPUs were visible
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.single_gpu_guard(args)
    assert args.n_gpu == 1


def test_tensor_logs_become_floats_and_json_works():
    logs = distributed.floats_in_logs({"loss": 1.96, "grad_norm": torch.tensor(4.6666), "epoch": 0.5})
    assert json.dumps(logs) == '{"loss": 1.96, "grad_norm": 4.666600227355957, "epoch": 0.5}'


def test_log_callback_fixes_the_trainer_state_too(tmp_path):
    """transformers 4.38.x keeps its own copy of each log in state.log_history and dumps it to JSON."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from reviewgpt.train.logs import make_log_callback

    state = TrainerState()
    state.global_step = 3
    logs = {"loss": 1.9611, "grad_norm": torch.tensor(4.6666)}
    state.log_history.append({**logs, "step": 3})  # what Trainer.log does before calling callbacks
    callback = make_log_callback(tmp_path / "log.jsonl", lambda step: step / 4)
    callback.on_log(TrainingArguments(output_dir=str(tmp_path), report_to=[]), state, TrainerControl(), logs=logs)
    state.save_to_json(str(tmp_path / "trainer_state.json"))  # raised "Tensor is not JSON serializable"
    assert json.loads((tmp_path / "log.jsonl").read_text())["grad_norm"] == pytest.approx(4.6666)


def test_launch_command_is_accelerate_with_ddp_or_zero2():
    cmd = distributed.launch_command(["--recipe", "tiny"], gpus=2)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-5:] == ["-m", "reviewgpt", "train", "--recipe", "tiny"]
    ds = distributed.launch_command(["--recipe", "tiny"], gpus=4, nodes=2, node_rank=1, main_addr="10.0.0.1",
                                    deepspeed="zero2")
    assert ds[ds.index("--num_processes") + 1] == "8" and ds[ds.index("--machine_rank") + 1] == "1"
    assert ds[ds.index("--deepspeed_config_file") + 1].endswith("envs/distributed/deepspeed-zero2.json")
    config = json.loads(Path(ds[ds.index("--deepspeed_config_file") + 1]).read_text())
    assert config["zero_optimization"]["stage"] == 2 and config["gradient_accumulation_steps"] == "auto"
    # the children read the config from their own arguments, not from an environment variable
    assert ds[-2:] == ["--deepspeed-config", ds[ds.index("--deepspeed_config_file") + 1]]
    with pytest.raises(UserError, match="--nodes > 1 needs --main-addr"):
        distributed.launch_command([], gpus=1, nodes=2)


def test_launch_flags_are_not_passed_to_the_children():
    argv = ["--recipe", "tiny", "--gpus", "2", "--nodes=1", "--deepspeed", "zero2", "--data", "d.jsonl"]
    assert distributed.strip_launch_flags(argv) == ["--recipe", "tiny", "--data", "d.jsonl"]


def test_zero3_is_not_offered_but_refused_with_the_reason(tmp_path, capsys):
    # issue 19 item 11: `--help` offers only what runs; passing zero3 still says why it does not.
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "tiny", "--data", "d.jsonl", "--output", str(tmp_path), "--gpus", "2",
              "--deepspeed", "zero3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "bnb_4bit_quant_storage" in err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--deepspeed {zero2}" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_more_gpus_than_there_are_is_clear(tmp_path, capsys):
    code = main(["train", "--recipe", "tiny", "--data", "d.jsonl", "--output", str(tmp_path), "--gpus", "2"])
    assert code == 2 and "--gpus 2: this machine has 0 CUDA GPU(s)" in capsys.readouterr().err


def _train_cmd(model, data, out, *extra):
    return ["-m", "reviewgpt", "train", "--recipe", "tiny", "--model", str(model), "--data", str(data),
            "--output", str(out), "--max-steps", "4", "--save-steps", "2", "--logging-steps", "1",
            "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2",
            "--max-seq-length", "384", *extra]


def _torchrun(args, env):
    # --standalone: a free port of torchrun's choosing, so a parallel run on the same machine cannot collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_processes_on_cpu_match_one_process_and_resume(tiny_gemma, sample_file, tmp_path):
    """gloo DDP with 2 processes x accumulation 1 = 1 process x accumulation 2: same loss curve."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    single = subprocess.run([sys.executable, *_train_cmd(tiny_gemma, sample_file, tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    two = _torchrun(_train_cmd(tiny_gemma, sample_file, tmp_path / "two"), env)
    assert two.returncode == 0, two.stderr[-3000:]
    one_losses, two_losses = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(two_losses) == [1, 2, 3, 4]
    for step in one_losses:
        assert two_losses[step] == pytest.approx(one_losses[step], rel=2e-3), step
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["world_size"] == 2

    # Resume under two processes: as if killed after step 2's checkpoint, rerun the same command.
    import shutil

    shutil.rmtree(tmp_path / "two" / "checkpoint-4")
    (tmp_path / "two" / "train_summary.json").unlink()
    again = _torchrun(_train_cmd(tiny_gemma, sample_file, tmp_path / "two"), env)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 4
    resumed = train_losses(tmp_path / "two")
    for step in (3, 4):
        assert resumed[step] == pytest.approx(one_losses[step], rel=2e-3), step
