"""Fault injection (issue 19): `train`, `review`, `data prepare` and `merge` killed with SIGKILL at points
spread over their work (tests/fault_driver.py), then rerun with the same command. Each rerun must exit 0
and give what an uninterrupted run gives: the same per-step losses and adapter bytes, every paper
reviewed once, the same prepared and merged files; nothing partial taken as complete."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import train_losses

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TABLE = []

# 1 x 3 accumulation over 16 records: step 6 reaches into the second epoch; save_total_limit 1 rotates.
TRAIN_FLAGS = ["--max-steps", "6", "--save-steps", "2", "--save-total-limit", "1", "--logging-steps", "1",
               "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "3", "--max-seq-length", "384"]
TRAIN_POINTS = [
    ("load_model", 1),          # before anything is written
    ("training_step", 1),       # the first micro-batch
    ("training_step", 8),       # step 3, mid-accumulation
    ("log_append", 4),          # step 4's log line half written, before its checkpoint
    ("optimizer_save", 2),      # inside checkpoint-4: optimizer.pt half written
    ("rotation", 1),            # checkpoint-2 half deleted after checkpoint-4 was put in place
    ("state_save", 3),          # inside the final checkpoint-6: trainer_state.json half written
    ("checkpoint_rename", 3),   # checkpoint-6 whole but still tmp-checkpoint-6
    ("final_adapter", 1),       # inside the final save: its first file (the model card) being put in place
    ("final_adapter", 3),       # the adapter's config in place, its weights not
    ("final_adapter", 5),       # the adapter in place, the tokenizer's files not
    ("loss_curve", 1),          # loss_curve.png half written
    ("summary", 1),             # train_summary.json half written, the last file
]


def _run(args, point=None):
    # Read now, not at import: conftest sets TRITON_INTERPRET while collecting (interpreted kernels: minutes).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    prefix = ["-m", "tests.fault_driver", f"{point[0]}@{point[1]}", "--"] if point else ["-m", "reviewgpt"]
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, timeout=900, env=env,
                          cwd=ROOT)


def _killed_then_rerun(command, args, point, compare, after_kill=None):
    killed = _run(args, point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
    if after_kill:
        after_kill()
    rerun = _run(args)
    assert rerun.returncode == 0, (point, rerun.stderr[-3000:])
    mismatches = compare()
    TABLE.append((command, f"{point[0]}@{point[1]}", killed.returncode, rerun.returncode, len(mismatches)))
    assert mismatches == [], (point, mismatches)


@pytest.fixture(scope="module", autouse=True)
def print_table(request):
    yield
    if TABLE:
        lines = ["", "fault injection: command | point@K | killed exit | rerun exit | mismatches"]
        lines += [" | ".join(str(cell) for cell in row) for row in TABLE]
        lines.append(f"{len(TABLE)} points, {len(TABLE)} reruns, "
                     f"{sum(row[4] for row in TABLE)} mismatches")
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # the table goes to the terminal, in CI's log too
            print("\n".join(lines), flush=True)


@pytest.fixture(scope="module")
def straight_run(tiny_gemma, sample_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    done = _run(["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file), "--output",
                 str(out), *TRAIN_FLAGS])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _adapter_config(run):
    config = json.loads((run / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])  # peft writes a set: its order varies by process
    return config


@pytest.mark.parametrize("point", TRAIN_POINTS, ids=[f"{p}@{k}" for p, k in TRAIN_POINTS])
def test_train_killed_anywhere_reruns_to_the_uninterrupted_result(point, straight_run, tiny_gemma, sample_file,
                                                                 tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "tiny", "--model", str(tiny_gemma), "--data", str(sample_file), "--output", str(out),
            *TRAIN_FLAGS]

    def compare():
        problems = []
        if not (out / "train_summary.json").is_file():
            problems.append("no train_summary.json")
        if train_losses(out) != train_losses(straight_run):
            problems.append(f"losses {train_losses(out)} != {train_losses(straight_run)}")
        adapter = "adapter_model.safetensors"
        if (out / adapter).read_bytes() != (straight_run / adapter).read_bytes():
            problems.append(f"{adapter} differs")
        if _adapter_config(out) != _adapter_config(straight_run):
            problems.append("adapter_config.json differs")
        if json.loads((out / "train_summary.json").read_text())["global_step"] != 6:
            problems.append("global_step")
        leftovers = [p.name for p in out.iterdir() if p.name.startswith((".", "tmp-"))]
        if leftovers:
            problems.append(f"left behind: {leftovers}")
        return problems

    _killed_then_rerun("train", args, point, compare)


REVIEW_POINTS = [("generate", 1), ("review_append", 1), ("generate", 4), ("review_append", 3),
                 ("review_append", 6)]


@pytest.fixture(scope="module")
def straight_reviews(tiny_gemma, sample_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reviews") / "reviews.jsonl"
    done = _run(["review", "--model", str(tiny_gemma), "--papers", str(sample_file), "--output", str(out),
                 "--batch-size", "1", "--max-new-tokens", "6"])
    assert done.returncode == 0, done.stderr[-3000:]
    return {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}


@pytest.mark.parametrize("point", REVIEW_POINTS, ids=[f"{p}@{k}" for p, k in REVIEW_POINTS])
def test_review_killed_anywhere_reviews_each_paper_once(point, straight_reviews, tiny_gemma, sample_file, tmp_path):
    out = tmp_path / "reviews.jsonl"
    args = ["review", "--model", str(tiny_gemma), "--papers", str(sample_file), "--output", str(out),
            "--batch-size", "1", "--max-new-tokens", "6"]
    first = _run([*args, "--limit", "2"])  # lines written before: the rerun must leave them as they are
    assert first.returncode == 0, first.stderr[-2000:]
    head = out.read_bytes()

    def compare():
        problems = []
        text = out.read_bytes()
        if not text.startswith(head):
            problems.append("the earlier lines changed")
        rows = [json.loads(line) for line in text.decode().splitlines()]
        ids = [row["id"] for row in rows]
        if sorted(ids) != sorted(straight_reviews) or len(ids) != len(set(ids)):
            problems.append(f"papers reviewed: {ids}")
        for row in rows:
            if row["review"] != straight_reviews[row["id"]]["review"]:
                problems.append(f"{row['id']}: another review than the uninterrupted run's")
        return problems

    _killed_then_rerun("review", args, point, compare)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_prepare_killed_mid_write_reruns_to_the_same_files(k, sample_file, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "out"
    assert _run(["data", "prepare", str(sample_file), "--output", str(straight), "--eval-fraction", "0.25"]
                ).returncode == 0
    args = ["data", "prepare", str(sample_file), "--output", str(out), "--eval-fraction", "0.25"]

    def compare():
        expected = {p.name: p.read_bytes() for p in straight.iterdir()}
        got = {p.name: p.read_bytes() for p in out.iterdir()}
        return [name for name in sorted(set(expected) | set(got)) if expected.get(name) != got.get(name)]

    _killed_then_rerun("data prepare", args, ("prepare_write", k), compare)


@pytest.fixture(scope="module")
def merged_straight(straight_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged"
    done = _run(["merge", str(straight_run), "--output", str(out), "--dtype", "float32"])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("point", [("merge_weights", 1), ("merge_metadata", 1), ("merge_replace", 1)],
                         ids=["weights", "metadata", "replace"])
def test_merge_killed_mid_write_never_leaves_a_partial_model(point, straight_run, merged_straight, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", str(straight_run), "--output", str(out), "--dtype", "float32"]

    def compare():
        problems = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        for name in ("model.safetensors", "config.json", "reviewgpt.json"):
            if (out / name).read_bytes() != (merged_straight / name).read_bytes():
                problems.append(f"{name} differs")
        return problems

    def nothing_in_place():
        assert not out.exists(), "a merge killed before it was whole must not leave --output"

    _killed_then_rerun("merge", args, point, compare, nothing_in_place)
