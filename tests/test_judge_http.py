"""`reviewgpt judge` against a fake OpenAI-compatible server on loopback.

Only these tests may open sockets, and only to 127.0.0.1 (pytest-socket `allow_hosts`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from reviewgpt.cli import main
from reviewgpt.eval.http import RequestFailed
from reviewgpt.eval.judge.cache import CACHE_FILE
from reviewgpt.eval.judge.client import ChatCompletionsClient, HTTPJudgeConfig
from reviewgpt.eval.judge.prompt import JUDGE_PROMPT_VERSION, QUESTIONS
from reviewgpt.eval.judge.run import JudgeRunConfig, run_judge
from tests.judge_support.data import CANDIDATE_MARK, judge_args, write_review_files
from tests.judge_support.server import FakeJudgeServer, Reply, candidate_is, verdict_json

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

SECRET = "sk-test-SECRET-0123456789"
FAST = dict(timeout_s=2.0, backoff_s=0.001, max_backoff_s=0.05)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("REVIEWGPT_TEST_KEY", SECRET)


def prefers_candidate(n, body):
    return Reply(content=verdict_json(candidate_is(body["messages"], CANDIDATE_MARK)))


def client(server, model="judge-model", **overrides):
    return ChatCompletionsClient(
        HTTPJudgeConfig(
            model=model, base_url=server.url, api_key_env="REVIEWGPT_TEST_KEY", **{**FAST, **overrides}
        )
    )


def judge(tmp_path, server, out="out", **overrides):
    candidate, reference = write_review_files(tmp_path)
    config = JudgeRunConfig(output_dir=str(tmp_path / out), **overrides)
    return run_judge(candidate, reference, client(server), config, progress=False)


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_good_answers_give_win_rate_interval_and_files(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeJudgeServer(prefers_candidate) as server:
        summary = judge(tmp_path, server)
    assert server.count == 6  # 3 papers x 2 orders
    assert summary["overall"]["rate"] == 1.0 and summary["overall"]["n"] == 3
    assert 0.4 < summary["overall"]["low"] < 0.5 and summary["overall"]["high"] == 1.0  # Wilson, n=3
    assert summary["position_consistency"] == 1.0 and summary["first_position_preference"] == 0.5
    assert all(w["rate"] == 1.0 for w in summary["per_criterion"].values())
    # The wire format: model, both messages, deterministic sampling, the key only in the header.
    body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and len(body["messages"]) == 2
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    out = tmp_path / "out"
    lines = read_jsonl(out / "verdicts.jsonl")
    assert [line["paper_id"] for line in lines] == ["paper000", "paper001", "paper002"]
    assert lines[0]["orders"]["AB"]["verdict"]["overall"]["reason"] == "because of overall"
    assert lines[0]["coverage"]["candidate"]["reasons for acceptance"] is True
    assert JUDGE_PROMPT_VERSION in (out / "judge_prompt.txt").read_text()
    assert "100.0%" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["prompt_version"] == JUDGE_PROMPT_VERSION
    for path in out.iterdir():  # the key is never written ...
        assert SECRET not in path.read_text()
    assert SECRET not in caplog.text  # ... nor logged
    assert SECRET not in repr(client(server))


def test_position_bias_cancels_out(tmp_path):
    with FakeJudgeServer(lambda n, body: Reply(content=verdict_json("A"))) as server:
        summary = judge(tmp_path, server)
    assert summary["overall"]["rate"] == 0.5 and summary["overall"]["ties"] == 3
    assert summary["position_consistency"] == 0.0 and summary["first_position_preference"] == 1.0


def test_malformed_answer_is_retried_then_recorded_unparsable_never_guessed(tmp_path):
    def script(n, body):
        user = body["messages"][-1]["content"]
        if "Study 1" in user:  # paper001: always prose, never the JSON asked for
            return Reply(content="Review A is clearly better overall.")
        if "Study 2" in user and n % 2:  # paper002: a fenced, spelled-out answer is fine
            return Reply(
                content="```json\n"
                + verdict_json("Review " + candidate_is(body["messages"], CANDIDATE_MARK))
                + "\n```"
            )
        return prefers_candidate(n, body)

    with FakeJudgeServer(script) as server:
        summary = judge(tmp_path, server, parse_retries=2)
    assert server.count == 4 + 2 * 3  # paper001: 1 try + 2 retries per order
    assert summary["unparsable_judgments"] == 2 and summary["judged_pairs"] == 2
    assert summary["overall"]["rate"] == 1.0  # the unparsable pair counts neither way
    line = read_jsonl(tmp_path / "out" / "verdicts.jsonl")[1]
    assert line["score"] is None and line["orders"]["AB"]["status"] == "unparsable"
    assert line["orders"]["AB"]["raw"] == "Review A is clearly better overall."
    assert "no JSON object" in line["orders"]["AB"]["error"]


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after(tmp_path):
    def script(n, body):
        if n in (1, 2):
            return Reply(429, headers={"Retry-After": "0.3"})
        if n in (3, 4):
            return Reply(503 if n == 3 else 500)
        return prefers_candidate(n, body)

    waits = []
    with FakeJudgeServer(script) as server:
        c = ChatCompletionsClient(
            HTTPJudgeConfig(
                model="m",
                base_url=server.url,
                api_key_env="REVIEWGPT_TEST_KEY",
                **{**FAST, "max_backoff_s": 1.0},
            ),
            sleep=waits.append,
        )
        answers = [
            c.complete([{"role": "user", "content": "[Review A]x[End of review A]"}]) for _ in range(2)
        ]
    assert server.count == 6 and all("winner" in a for a in answers)
    assert len(waits) == 4 and waits[0] >= 0.3 and waits[1] >= 0.3  # Retry-After honoured
    assert waits[2] < 0.01 and waits[3] < 0.01  # exponential from backoff_s=0.001 otherwise


def test_retry_after_is_capped_and_giving_up_raises(tmp_path):
    with FakeJudgeServer(lambda n, body: Reply(503, headers={"Retry-After": "3600"})) as server:
        waits = []
        c = ChatCompletionsClient(
            HTTPJudgeConfig(model="m", base_url=server.url, max_retries=2, **FAST), sleep=waits.append
        )
        with pytest.raises(RequestFailed, match="HTTP 503: status 503 after 3 attempts"):
            c.complete([{"role": "user", "content": "hi"}])
    assert server.count == 3 and waits == [0.05, 0.05]


def test_a_200_that_is_not_a_chat_completion_is_retried(tmp_path):
    def script(n, body):
        return Reply(raw=b"<html>gateway hiccup</html>") if n == 1 else prefers_candidate(n, body)

    with FakeJudgeServer(script) as server:
        summary = judge(tmp_path, server)
    assert server.count == 7 and summary["judged_pairs"] == 3


def test_timeouts_are_retried_and_unanswered_judgments_stay_missing_until_a_rerun(tmp_path):
    def slow_first(n, body):
        return Reply(content=verdict_json("tie"), delay_s=1.0) if n == 1 else prefers_candidate(n, body)

    with FakeJudgeServer(slow_first) as server:
        c = client(server, timeout_s=0.2)
        assert "winner" in c.complete([{"role": "user", "content": "[Review A]x[End of review A]"}])
    assert server.count == 2  # the timed-out request, then the retry

    # A judge that never answers in time: the CLI reports missing judgments and exits 1 ...
    candidate, reference = write_review_files(tmp_path)
    out = tmp_path / "cli"
    args = judge_args(candidate, reference, "openai:m", out, "--api-key-env", "REVIEWGPT_TEST_KEY",
                      "--timeout", "0.2", "--max-retries", "1", "--backoff", "0.001")
    with FakeJudgeServer(lambda n, body: Reply(content=verdict_json("A"), delay_s=0.6)) as slow:
        assert main([*args, "--base-url", slow.url]) == 1
    assert json.loads((out / "summary.json").read_text())["missing_judgments"] == 6
    assert not (out / CACHE_FILE).exists() or not read_jsonl(out / CACHE_FILE)  # failures are not cached
    # ... and a rerun against a working judge asks exactly those.
    with FakeJudgeServer(prefers_candidate) as good:
        assert main([*args, "--base-url", good.url]) == 0
    assert good.count == 6


def test_rerun_asks_nothing_and_a_torn_cache_line_is_asked_again(tmp_path):
    with FakeJudgeServer(prefers_candidate) as server:
        judge(tmp_path, server)
        assert server.count == 6
        again = judge(tmp_path, server)
        assert server.count == 6 and again["judgments_asked"] == 0 and again["overall"]["rate"] == 1.0
        cache = tmp_path / "out" / CACHE_FILE
        lines = cache.read_text().splitlines()
        cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
        third = judge(tmp_path, server)
    assert server.count == 7 and third["judgments_asked"] == 1 and third["judged_pairs"] == 3


def test_crash_mid_run_then_resume_asks_only_the_missing(tmp_path):
    candidate, reference = write_review_files(tmp_path, n_papers=6)
    out = tmp_path / "out"

    def slow_good(n, body):
        return Reply(content=verdict_json(candidate_is(body["messages"], CANDIDATE_MARK)), delay_s=0.05)

    cmd = [sys.executable, "-m", "reviewgpt",
           *judge_args(candidate, reference, "openai:m", out, "--api-key-env", "REVIEWGPT_TEST_KEY",
                       "--concurrency", "1")]
    with FakeJudgeServer(slow_good) as first:
        proc = subprocess.Popen(
            [*cmd, "--base-url", first.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.time() + 20
        while first.count < 5 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(10)
        proc.stderr.close()
    assert 5 <= first.count < 12, "the crash must come mid-run"
    cached = read_jsonl(out / CACHE_FILE)
    assert 4 <= len(cached) <= first.count  # every answer that arrived before the kill (bar one in flight)
    with FakeJudgeServer(slow_good) as second:
        summary = run_judge(
            candidate,
            reference,
            client(second, model="m"),
            JudgeRunConfig(output_dir=str(out)),
            progress=False,
        )
    assert second.count == 12 - len(cached) == summary["judgments_asked"]  # no judgment paid for twice
    assert (
        summary["judged_pairs"] == 6
        and summary["overall"]["rate"] == 1.0
        and summary["missing_judgments"] == 0
    )


def test_a_rejected_key_stops_with_one_clear_line(tmp_path, capsys):
    candidate, reference = write_review_files(tmp_path)
    with FakeJudgeServer(lambda n, body: Reply(401)) as server:
        code = main(judge_args(candidate, reference, "openai:m", tmp_path / "o", "--base-url", server.url,
                               "--api-key-env", "REVIEWGPT_TEST_KEY"))
    err = capsys.readouterr().err
    assert code == 2 and "refused the API key (HTTP 401)" in err and "REVIEWGPT_TEST_KEY" in err
    assert "Traceback" not in err and SECRET not in err
    # Never retried (that would be 6 x 7 requests); workers may pick up a task or two before the stop lands.
    assert server.count <= 6
    # Workers still in flight stop retrying (default 2 s backoff) instead of holding the process open.
    deadline = time.time() + 10
    while any(t.name.startswith("judge") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(t.name.startswith("judge") for t in threading.enumerate())


def prose_unless_json_asked(n, body):
    """A small judge: prose, unless the request constrains the output to JSON."""
    if "response_format" not in body:
        return Reply(content="Both reviews are fine, but A is better overall.")
    return prefers_candidate(n, body)


@pytest.mark.parametrize("mode, kind", [("object", "json_object"), ("schema", "json_schema")])
def test_json_mode_sends_response_format_and_small_judges_then_parse(tmp_path, capsys, mode, kind):
    candidate, reference = write_review_files(tmp_path)
    args = judge_args(candidate, reference, "openai:m", tmp_path / "o", "--api-key-env", "REVIEWGPT_TEST_KEY",
                      "--parse-retries", "0")
    with FakeJudgeServer(prose_unless_json_asked) as server:
        assert main([*args, "--base-url", server.url]) == 0
        assert "--json-mode object" in capsys.readouterr().err  # 6 prose answers: the hint names the flag
        assert main([*args, "--base-url", server.url, "--json-mode", mode]) == 0
    asked = server.requests[-1]["response_format"]
    assert asked["type"] == kind
    if kind == "json_schema":
        schema = asked["json_schema"]["schema"]
        assert set(schema["required"]) == set(QUESTIONS)
        assert schema["properties"]["overall"]["properties"]["winner"]["enum"] == ["A", "B", "tie"]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["judge"].endswith(f"|json={mode}") and summary["judged_pairs"] == 3
    assert summary["overall"]["rate"] == 1.0


def test_a_server_without_response_format_says_to_turn_json_mode_off(tmp_path, capsys):
    candidate, reference = write_review_files(tmp_path)
    with FakeJudgeServer(prefers_candidate, response_formats=()) as server:
        code = main(judge_args(candidate, reference, "openai:m", tmp_path / "o", "--base-url", server.url,
                               "--json-mode", "object"))
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 400" in err and "--json-mode off" in err


def _dead_url():
    import socket

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_gone_judge_stops_after_a_few_connection_failures_instead_of_retrying_every_judgment(tmp_path):
    candidate, reference = write_review_files(tmp_path, n_papers=4)
    waits = []
    backend = ChatCompletionsClient(
        HTTPJudgeConfig(model="m", base_url=_dead_url(), max_retries=6, **FAST), sleep=waits.append
    )
    summary = run_judge(candidate, reference, backend, JudgeRunConfig(output_dir=str(tmp_path / "o")),
                        progress=False)
    assert summary["missing_judgments"] == 8 and "3 connections in a row" in summary["judge_gone"]
    assert len(waits) <= 2  # retried until the third failure in a row, not 6 times for each of 8 judgments


def test_a_gone_judge_from_the_cli_says_rerun_to_ask_only_the_missing(tmp_path, capsys):
    candidate, reference = write_review_files(tmp_path)
    code = main(judge_args(candidate, reference, "openai:m", tmp_path / "o", "--base-url", _dead_url(),
                           "--backoff", "0.001"))
    err = capsys.readouterr().err
    assert code == 1 and "connections in a row" in err and "rerun the same command to ask only those" in err


def test_summary_json_is_strict_json_when_nothing_was_judged(tmp_path):
    with FakeJudgeServer(lambda n, body: Reply(content="no idea")) as server:
        summary = judge(tmp_path, server, parse_retries=0)
    assert summary["judged_pairs"] == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    strict = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert strict["overall"]["rate"] is None and "n/a" in (tmp_path / "out" / "summary.md").read_text()
