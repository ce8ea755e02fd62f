"""A local transformers model as the judge (tiny random Gemma: the real code paths, not quality)."""

from __future__ import annotations

import json

import pytest

from reviewgpt.cli import main
from reviewgpt.eval.judge.local import LocalJudge, LocalJudgeConfig
from reviewgpt.eval.judge.prompt import QUESTIONS, WINNERS, build_messages
from reviewgpt.eval.judge.run import JudgeRunConfig, run_judge
from tests.judge_support.data import judge_args, write_review_files


@pytest.fixture(scope="module")
def judge(tiny_gemma):
    return LocalJudge(LocalJudgeConfig(model_dir=str(tiny_gemma)))


MESSAGES = build_messages("Strengths: clear. Weaknesses: small data.", "Fine paper.", "A paper on pruning.")


def test_forced_choice_scores_are_the_models_own_log_probabilities(judge):
    import torch

    scores = judge.answer_logprobs(MESSAGES)
    assert set(scores) == set(QUESTIONS) and all(set(s) == set(WINNERS) for s in scores.values())
    # Recompute one answer from scratch with the model's full forward pass (no prefix cache, no trick).
    from reviewgpt.eval.judge.local import _encode, render_chat

    prompt = render_chat(judge.tokenizer, MESSAGES)
    full = {w: _encode(judge.tokenizer, f'{prompt}{{"overall": {{"winner": "{w}"') for w in WINNERS}
    start = min(next(i for i, (a, b) in enumerate(zip(full["A"], full[w])) if a != b) for w in ("B", "tie"))
    ids = torch.tensor([full["tie"]])
    with torch.no_grad():
        logp = torch.log_softmax(judge.model(ids).logits[0].float(), -1)
    expected = sum(logp[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))
    assert scores["overall"]["tie"] == pytest.approx(expected, abs=1e-3)


def test_prefix_cache_changes_nothing(judge):
    cached = judge.answer_logprobs(MESSAGES)
    judge.use_prefix_cache = False
    try:
        plain = judge.answer_logprobs(MESSAGES)
    finally:
        judge.use_prefix_cache = True
    for q in QUESTIONS:
        for w in WINNERS:
            assert cached[q][w] == pytest.approx(plain[q][w], abs=1e-4)


def test_verdict_is_the_most_likely_answer_and_deterministic(judge):
    scores = judge.answer_logprobs(MESSAGES)
    v = judge.verdict(MESSAGES)
    assert v.winners["overall"] == max(WINNERS, key=scores["overall"].get)
    assert "log p" in v.reasons["overall"]
    assert judge.verdict(MESSAGES) == v


def test_local_judge_run_end_to_end_then_cached(tmp_path, tiny_gemma, capsys):
    candidate, reference = write_review_files(tmp_path, n_papers=2)
    args = judge_args(candidate, reference, f"hf:{tiny_gemma}", tmp_path / "out", "--paper-chars", "300")
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["judged_pairs"] == 2 and summary["unparsable_judgments"] == 0
    assert summary["judge"].startswith("hf:") and "mode=loglik" in summary["judge"]
    capsys.readouterr()
    assert main(args) == 0
    assert "judgments: 0 asked, 0 answered, 4 from the cache" in capsys.readouterr().out


def test_generating_judge_that_ignores_the_format_is_unparsable_not_guessed(tmp_path, tiny_gemma):
    candidate, reference = write_review_files(tmp_path, n_papers=1)
    backend = LocalJudge(LocalJudgeConfig(model_dir=str(tiny_gemma), mode="generate", max_new_tokens=8))
    summary = run_judge(
        candidate,
        reference,
        backend,
        JudgeRunConfig(output_dir=str(tmp_path / "o"), parse_retries=1, paper_chars=0),
        progress=False,
    )
    assert summary["unparsable_judgments"] == 2 and summary["judged_pairs"] == 0
    line = json.loads((tmp_path / "o" / "verdicts.jsonl").read_text())
    assert line["score"] is None and line["orders"]["AB"]["verdict"] is None


def test_missing_judge_directory_is_a_user_error(tmp_path, capsys):
    candidate, reference = write_review_files(tmp_path, n_papers=1)
    code = main(judge_args(candidate, reference, f"hf:{tmp_path / 'nope'}", tmp_path / "o"))
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(judge_args(candidate, reference, "gpt4", tmp_path / "o"))
    assert code == 2 and "not a judge spec" in capsys.readouterr().err


def _short_context_judge(tmp_path, tiny_gemma, positions=1024):
    import shutil

    judge_dir = tmp_path / "judge"
    shutil.copytree(tiny_gemma, judge_dir)
    config = json.loads((judge_dir / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (judge_dir / "config.json").write_text(json.dumps(config))
    return judge_dir


def test_a_paper_longer_than_the_judges_context_is_trimmed_in_tokens_and_counted(tmp_path, tiny_gemma, capsys):
    judge_dir = _short_context_judge(tmp_path, tiny_gemma)
    candidate, reference = write_review_files(tmp_path, n_papers=2)
    rows = [json.loads(line) for line in reference.read_text().splitlines()]
    reference.write_text("".join(json.dumps({**r, "paper": (r["paper"] + "\n\n") * 8}) + "\n" for r in rows))
    assert main(judge_args(candidate, reference, f"hf:{judge_dir}", tmp_path / "out")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["papers_trimmed_to_judge_context"] == 2 and summary["judged_pairs"] == 2
    assert "2 paper(s) trimmed to the judge's context" in capsys.readouterr().out

    from reviewgpt.eval.judge.local import _encode, render_chat
    from reviewgpt.eval.judge.prompt import TRUNCATION_MARK

    judge = LocalJudge(LocalJudgeConfig(model_dir=str(judge_dir)))
    paper, trimmed = judge.fit_paper("Review one.", "Review two.", rows[0]["paper"] * 8)
    prompt = _encode(judge.tokenizer, render_chat(judge.tokenizer, build_messages("Review one.", "Review two.", paper)))
    assert trimmed and paper.endswith(TRUNCATION_MARK) and len(prompt) + judge._answer_tokens() <= 1024
    assert paper.startswith(rows[0]["paper"][:500])  # the head is kept


def test_reviews_that_alone_exceed_the_judges_context_stop_with_one_sentence(tmp_path, tiny_gemma, capsys):
    judge_dir = _short_context_judge(tmp_path, tiny_gemma, positions=512)
    candidate, reference = write_review_files(tmp_path, n_papers=1)
    code = main(judge_args(candidate, reference, f"hf:{judge_dir}", tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "context of 512 tokens" in err and err.count("\n") == 1
