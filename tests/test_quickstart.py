import json
import subprocess
import sys


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    """The README's main job: data check -> train -> merge -> review on the tiny default."""
    out = subprocess.run([sys.executable, "-m", "reviewgpt", "quickstart", str(tmp_path / "qs")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "qs"
    summary = json.loads((root / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 150 and summary["eval_records"] > 0
    losses = [json.loads(line)["loss"] for line in (root / "run" / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0] - 0.5, "the tiny model must learn something in 150 steps"
    reviews = [json.loads(line) for line in (root / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 4 and all(r["review"] for r in reviews)
    assert (root / "merged" / "model.safetensors").is_file()
