import json
import subprocess
import sys


def _quickstart(root):
    return subprocess.run([sys.executable, "-m", "reviewgpt", "quickstart", str(root)],
                          capture_output=True, text=True, timeout=600)


def _files(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_quickstart_runs_the_whole_pipeline_and_a_rerun_changes_nothing(tmp_path):
    """The README's main job: data check -> train -> merge -> review on the tiny default. Run again, it
    neither trains another step nor re-merges, and the reviews it shows are the model's (issue 19 item 8)."""
    root = tmp_path / "qs"
    out = _quickstart(root)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((root / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 150 and summary["eval_records"] > 0
    losses = [json.loads(line)["loss"] for line in (root / "run" / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0] - 0.5, "the tiny model must learn something in 150 steps"
    reviews = [json.loads(line) for line in (root / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 4 and all(r["review"] for r in reviews)
    assert (root / "merged" / "model.safetensors").is_file()

    run, merged, written = _files(root / "run"), _files(root / "merged"), (root / "reviews.jsonl").read_bytes()
    again = _quickstart(root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _files(root / "run") == run and _files(root / "merged") == merged
    assert (root / "reviews.jsonl").read_bytes() == written
    assert "this run is finished (step 150 of 150" in again.stderr and "already this merge" in again.stderr


def test_quickstart_with_the_mistral_family_trains_with_mistrals_chat_format(tmp_path):
    """issue 19 item 6: `--family mistral` (offered by --help) failed at its first step: the tiny recipe's
    template is Gemma's, whose <bos> the Mistral tokenizer does not have. The steps run as the
    quickstart lists them, with training and reviews shortened."""
    import argparse

    from reviewgpt import cli
    from reviewgpt.commands import quickstart

    real_main, steps = cli.main, []

    def shortened(argv):
        steps.append(argv)
        extra = {"train": ["--max-steps", "3"], "review": ["--max-new-tokens", "4"]}.get(argv[0], [])
        return real_main([*argv, *extra])

    assert quickstart.run(argparse.Namespace(dir=str(tmp_path / "qs"), family="mistral", run_command=shortened)) == 0
    root = tmp_path / "qs"
    assert [s[:2] for s in steps] == [["tiny-model", "--family"], ["data", "check"], ["train", "--recipe"],
                                      ["merge", str(root / "run")], ["review", "--model"]]
    assert "template: mistral-inst" in (root / "run" / "reviewgpt_recipe.yaml").read_text()
    reviews = [json.loads(line) for line in (root / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 4 and {r["template"] for r in reviews} == {"mistral-inst"}
