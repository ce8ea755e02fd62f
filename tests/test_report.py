"""`reviewgpt report`: one page from the files train, judge and needle wrote; and the CLI help."""

from __future__ import annotations

import csv
import json

import pytest

from reviewgpt.cli import main
from reviewgpt.eval.judge.prompt import QUESTIONS
from reviewgpt.eval.judge.run import JudgeRunConfig, run_judge
from reviewgpt.eval.needle_results import CSV_FIELDS, plot_heatmap, read_rows
from tests.judge_support.data import CANDIDATE_MARK, write_review_files
from tests.judge_support.server import candidate_is


class CandidateLovingJudge:
    """An in-process judge (no network, no model) that always prefers the candidate."""

    identity = "fake:candidate-lover"

    def complete(self, messages):
        winner = candidate_is(messages, CANDIDATE_MARK)
        return json.dumps({q: {"winner": winner, "reason": "r"} for q in QUESTIONS})


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"step": 1, "loss": 2.5},
        {"step": 2, "loss": 2.0},
        {"step": 2, "eval_loss": 2.2},
        {"step": 4, "loss": 1.5},
        {"step": 4, "eval_loss": 1.9},
    ]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    candidate, reference = write_review_files(tmp_path)
    run_judge(
        candidate, reference, CandidateLovingJudge(), JudgeRunConfig(output_dir=str(run / "judge")), progress=False
    )
    needle = run / "needle"
    needle.mkdir()
    with open(needle / "needle.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for length in (1024, 2048):
            for depth in (0, 100):
                writer.writerow(
                    {
                        "length": length,
                        "depth_percent": depth,
                        "needle_position": 1,
                        "tokens_needle_to_answer": 10,
                        "answer_loss": 0.5 if length == 1024 else 3.0,
                        "answer_tokens": 3,
                        "retrieved": length == 1024,
                        "generated": "x",
                    }
                )
    plot_heatmap(read_rows(needle / "needle.csv"), needle / "needle_heatmap.png")
    return run


def test_report_gathers_loss_judge_and_needle(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.md").read_text()
    assert "Train loss: 2.5000 at step 1 -> 1.5000 at step 4" in page
    assert "best 1.9000 at step 4" in page and "![loss curve](loss_curve.png)" in page
    assert "Candidate win rate (ties count half): 100.0%" in page and "fake:candidate-lover" in page
    assert "| 1024 | 2/2 | 0.500 |" in page and "| 2048 | 0/2 | 3.000 |" in page
    assert "![needle heatmap](needle/needle_heatmap.png)" in page
    assert (run_dir / "needle" / "needle_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_report_elsewhere_links_images_relative_to_itself(run_dir, tmp_path):
    out = tmp_path / "pages" / "r.md"
    assert main(["report", str(run_dir), "--output", str(out), "--judge", str(run_dir / "judge")]) == 0
    assert "![loss curve](../run/loss_curve.png)" in out.read_text()


def test_report_says_what_is_missing(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "judge").mkdir(parents=True)
    assert main(["report", str(run)]) == 2
    assert "has no train_log.jsonl" in capsys.readouterr().err
    assert main(["report", str(run), "--judge", str(run / "judge")]) == 2
    assert "no summary.json there" in capsys.readouterr().err
    (run / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert main(["report", str(run)]) == 0
    page = (run / "report.md").read_text()
    assert "No judge results" in page and "No needle results" in page


@pytest.mark.parametrize("command", ["judge", "needle", "report"])
def test_help_ends_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"reviewgpt {command} " in out.split("example:\n", 1)[1] and "%%" not in out
