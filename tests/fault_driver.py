"""Run a `reviewgpt` command and SIGKILL it at a chosen point: `python -m tests.fault_driver POINT@K -- ARGS`.

The product has no hook for this: the driver wraps library functions before calling `reviewgpt.cli.main`
and kills the process at the K-th time a point is reached. Points that write a file write part of it
first, as a kill in the middle of a write leaves it. tests/test_fault_injection.py reruns the same
command without the driver and compares the result with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Counter:
    def __init__(self, k: int):
        self.k, self.seen = k, 0

    def hit(self) -> bool:
        self.seen += 1
        return self.seen == self.k


def write_half(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[: max(1, len(data) // 2)])


def wrap(owner, name: str, before=None):
    """Replace owner.name by a function that calls `before(*args, **kwargs)` first."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        before(original, *args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def install(point: str, k: int) -> None:
    import io

    import torch

    counter = Counter(k)

    def at_call(owner, name):
        wrap(owner, name, lambda original, *a, **kw: die() if counter.hit() else None)

    if point == "load_model":  # after the data, before the weights: nothing written yet
        import reviewgpt.models as models

        at_call(models, "load_base_model")
    elif point == "training_step":  # in the middle of an optimizer step's accumulation
        import transformers

        at_call(transformers.Trainer, "training_step")
    elif point == "optimizer_save":  # inside a checkpoint: optimizer.pt half written
        original = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and Path(f).name == "optimizer.pt" and counter.hit():
                buffer = io.BytesIO()
                original(obj, buffer, *args, **kwargs)
                write_half(f, buffer.getvalue())
                die()
            return original(obj, f, *args, **kwargs)

        torch.save = save
    elif point == "state_save":  # inside a checkpoint: trainer_state.json, the last file, half written
        import transformers.trainer_callback as callback

        original_state = callback.TrainerState.save_to_json

        def save_to_json(self, json_path):
            if counter.hit():
                write_half(json_path, b'{"global_step": 1, "log_history": [')
                die()
            return original_state(self, json_path)

        callback.TrainerState.save_to_json = save_to_json
    elif point == "checkpoint_rename":  # the checkpoint is whole but still tmp-checkpoint-N
        import transformers.trainer as trainer_module

        real_os = trainer_module.os

        class OsWithKill:
            def __getattr__(self, name):
                return getattr(real_os, name)

            @staticmethod
            def rename(src, dst):
                if Path(src).name.startswith("tmp-checkpoint-") and counter.hit():
                    die()
                return real_os.rename(src, dst)

        trainer_module.os = OsWithKill()
    elif point == "rotation":  # save_total_limit deleting an old checkpoint, half done
        import shutil

        import transformers.trainer as trainer_module

        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if Path(path).name.startswith("checkpoint-") and counter.hit():
                files = sorted(p for p in Path(path).iterdir() if p.is_file())
                for p in files[: len(files) // 2]:
                    p.unlink()
                die()
            return original_rmtree(path, *args, **kwargs)

        trainer_module.shutil = type("shutil_with_kill", (), {"rmtree": staticmethod(rmtree),
                                                              "__getattr__": lambda self, n: getattr(shutil, n)})()
    elif point in ("log_append", "review_append"):  # a JSONL line half appended
        import reviewgpt.eval.generate as generate
        import reviewgpt.run as run

        owner = run if point == "log_append" else generate
        original_append = owner.append_line

        def append_line(path, line):
            if counter.hit():
                with open(path, "ab") as f:
                    f.write(line.encode()[: max(1, len(line) // 2)])
                die()
            return original_append(path, line)

        owner.append_line = append_line
    elif point == "final_adapter":  # the run's adapter being put in place from the last checkpoint
        import reviewgpt.train.run_files as run_files

        real_os = run_files.os

        class OsWithKill:
            def __getattr__(self, name):
                return getattr(real_os, name)

            @staticmethod
            def replace(src, dst):
                if counter.hit():
                    die()
                return real_os.replace(src, dst)

        run_files.os = OsWithKill()
    elif point in ("loss_curve", "summary", "merge_metadata", "prepare_write"):
        import reviewgpt.files as files
        import reviewgpt.train.logs as logs  # imports atomic_path by name: patched there too

        name = {"loss_curve": "loss_curve.png", "summary": "train_summary.json", "merge_metadata": "reviewgpt.json",
                "prepare_write": None}[point]
        original_path = files.atomic_path

        import contextlib

        @contextlib.contextmanager
        def atomic_path(path):
            with original_path(path) as temporary:
                yield temporary
                if (name is None or Path(path).name == name) and counter.hit():
                    data = Path(temporary).read_bytes() if Path(temporary).is_file() else b"x"
                    write_half(temporary, data)
                    die()

        files.atomic_path = logs.atomic_path = atomic_path
    elif point == "generate":  # in the middle of generating reviews: a `generate` call or a fast-engine step
        import transformers

        from reviewgpt.eval.engine_forward import DecodeStep

        at_call(transformers.GenerationMixin, "generate")
        at_call(DecodeStep, "__call__")
    elif point == "merge_weights":  # the merged weights half written
        import safetensors.torch

        original_save = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if counter.hit():
                write_half(filename, safetensors.torch.save(tensors, *args, **kwargs))
                die()
            return original_save(tensors, filename, *args, **kwargs)

        safetensors.torch.save_file = save_file
        import transformers.modeling_utils as modeling_utils

        modeling_utils.safe_save_file = save_file
    elif point == "merge_replace":  # the merged model whole in its staging folder, not yet in place
        import reviewgpt.merge as merge

        at_call(merge, "replace_folder")
    else:
        raise SystemExit(f"fault_driver: unknown point {point!r}")


def main() -> int:
    spec, separator, *argv = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.fault_driver POINT@K -- ARGS"
    point, _, k = spec.partition("@")
    install(point, int(k or 1))
    from reviewgpt.cli import main as reviewgpt_main

    return reviewgpt_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
