"""One Markdown page per run: loss curve, judge verdict and needle heatmap side by side.

Everything is read from files the other steps wrote, so the report can be rebuilt any time:

- `RUN_DIR/train_log.jsonl` (+ `loss_curve.png`) from `reviewgpt train`
- `summary.json` of each judge output folder (`--judge DIR`, default every `RUN_DIR/judge*/`)
- `needle.csv` (+ `needle_heatmap.png`) of the needle folder (`--needle DIR`, default `RUN_DIR/needle`)
- `score.json` of each `reviewgpt score` output folder (`--score DIR`, default every `RUN_DIR/score*/`)

Images are linked by paths relative to the report, so the folder can be moved or zipped whole.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

from reviewgpt import run
from reviewgpt.errors import UserError

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def read_train_log(path: Path) -> Dict:
    train, evals = [], []
    for row in run.read_log(path):
        if "loss" in row:
            train.append((row.get("step"), row["loss"]))
        if "eval_loss" in row:
            evals.append((row.get("step"), row["eval_loss"]))
    return {"train": train, "eval": evals}


def training_section(run_dir: Path, report_dir: Path) -> List[str]:
    log_path = run_dir / run.LOG_FILE
    lines = ["## Training", ""]
    if not log_path.is_file():
        return lines + [f"No training log (`{_rel(log_path, report_dir)}` not found).", ""]
    curve = read_train_log(log_path)
    train, evals = curve["train"], curve["eval"]
    if train:
        lines.append(
            f"- Train loss: {train[0][1]:.4f} at step {train[0][0]} -> {train[-1][1]:.4f} at step "
            f"{train[-1][0]} ({len(train)} logged steps)"
        )
    if evals:
        best = min(evals, key=lambda e: e[1])
        lines.append(
            f"- Eval loss: last {evals[-1][1]:.4f} at step {evals[-1][0]}; best {best[1]:.4f} at step {best[0]}"
        )
    if not train and not evals:
        lines.append("The training log holds no loss yet.")
    png = run_dir / run.LOSS_CURVE_FILE
    if png.is_file():
        lines += ["", f"![loss curve]({_rel(png, report_dir)})"]
    return lines + [""]


def judge_section(judge_dirs: Sequence[Path]) -> List[str]:
    from reviewgpt.eval.judge.report import summary_markdown

    lines: List[str] = []
    for judge_dir in judge_dirs:
        summary = json.loads((judge_dir / "summary.json").read_text(encoding="utf-8"))
        lines += [
            summary_markdown(summary, heading_level=2).replace("## Judge:", f"## Judge (`{judge_dir.name}`):", 1),
            "",
        ]
    return lines


def score_section(score_dirs: Sequence[Path]) -> List[str]:
    from reviewgpt.eval.score import SCORE_JSON, summary_markdown

    lines: List[str] = []
    for score_dir in score_dirs:
        summary = json.loads((score_dir / SCORE_JSON).read_text(encoding="utf-8"))
        lines += [summary_markdown(summary, heading_level=2, title=f"Scores (`{score_dir.name}`)"), ""]
    return lines


def needle_section(needle_dir: Path, report_dir: Path) -> List[str]:
    from reviewgpt.eval.needle_results import read_rows

    rows = read_rows(needle_dir / run.NEEDLE_CSV)
    lines = ["## Needle in a haystack", ""]
    if not rows:
        return lines + ["No cells measured yet.", ""]
    lines += ["| context length | retrieved | mean answer loss |", "|---|---|---|"]
    for length in sorted({r["length"] for r in rows}):
        cells = [r for r in rows if r["length"] == length]
        lines.append(
            f"| {length} | {sum(r['retrieved'] for r in cells)}/{len(cells)} | "
            f"{sum(r['answer_loss'] for r in cells) / len(cells):.3f} |"
        )
    png = needle_dir / run.NEEDLE_PNG
    if png.is_file():
        lines += ["", f"![needle heatmap]({_rel(png, report_dir)})"]
    return lines + [""]


def discover(run_dir: Path, judge_dirs=None, needle_dir=None):
    """The judge and needle folders to include: those given, else the run's own."""
    if judge_dirs:
        judges = [Path(d) for d in judge_dirs]
        for d in judges:
            if not (d / "summary.json").is_file():
                raise UserError(f"--judge {d}: no summary.json there; pass the --output folder of `reviewgpt judge`.")
    else:
        judges = sorted(p.parent for p in run_dir.glob("judge*/summary.json"))
    if needle_dir:
        needle = Path(needle_dir)
        if not (needle / run.NEEDLE_CSV).is_file():
            raise UserError(f"--needle {needle}: no needle.csv there; pass the --output folder of `reviewgpt needle`.")
    else:
        needle = run_dir / run.NEEDLE_DIR if (run_dir / run.NEEDLE_DIR / run.NEEDLE_CSV).is_file() else None
    return judges, needle


def discover_scores(run_dir: Path, score_dirs=None) -> List[Path]:
    if not score_dirs:
        return sorted(p.parent for p in run_dir.glob("score*/score.json"))
    for d in map(Path, score_dirs):
        if not (d / "score.json").is_file():
            raise UserError(f"--score {d}: no score.json there; pass the --output folder of `reviewgpt score`.")
    return [Path(d) for d in score_dirs]


def build_report(run_dir, judge_dirs=None, needle_dir=None, output=None, score_dirs=None) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; pass the --output folder of `reviewgpt train`.")
    judges, needle = discover(run_dir, judge_dirs, needle_dir)
    scores = discover_scores(run_dir, score_dirs)
    if not (run_dir / run.LOG_FILE).is_file() and not judges and not needle and not scores:
        raise UserError(
            f"{run_dir} has no train_log.jsonl, judge*/summary.json, score*/score.json or needle/needle.csv; pass "
            "--judge DIR, --score DIR or --needle DIR, or run train/judge/score/needle first."
        )
    output = Path(output) if output else run_dir / REPORT_FILE
    report_dir = output.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: {run_dir.name}", "", f"Run folder: `{run_dir}`", ""]
    lines += training_section(run_dir, report_dir)
    lines += judge_section(judges) if judges else ["## Judge", "", "No judge results for this run.", ""]
    lines += score_section(scores) if scores else ["## Scores", "", "No `reviewgpt score` results for this run.", ""]
    lines += (
        needle_section(needle, report_dir)
        if needle
        else ["## Needle in a haystack", "", "No needle results for this run.", ""]
    )
    output.write_text("\n".join(lines), encoding="utf-8")
    return output
