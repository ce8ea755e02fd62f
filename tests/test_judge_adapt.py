"""`reviewgpt judge` against servers as they are (issue 19 items 9 and 14): one that answers one request
at a time, one slower than the timeout, one that refuses `response_format` with an HTTP 500, a Ctrl-C in
the middle of a run; and counts that agree in summary.json, summary.md and the command's last line.

Like tests/test_judge_http.py, these tests open sockets to 127.0.0.1 only (the fake server in
tests/judge_support/server.py). Waits are short and the assertions leave room for a loaded machine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from reviewgpt.cli import main
from reviewgpt.eval.judge.cache import CACHE_FILE
from reviewgpt.eval.judge.client import ChatCompletionsClient, HTTPJudgeConfig
from reviewgpt.eval.judge.run import JudgeRunConfig, run_judge
from tests.judge_support.data import CANDIDATE_MARK, judge_args, write_review_files
from tests.judge_support.server import LLAMA_CPP_REFUSAL, FakeJudgeServer, Reply, candidate_is, verdict_json

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


def prefers_candidate(n, body, delay_s=0.0):
    return Reply(content=verdict_json(candidate_is(body["messages"], CANDIDATE_MARK)), delay_s=delay_s)


def client(server, **config):
    return ChatCompletionsClient(HTTPJudgeConfig(model="m", base_url=server.url, api_key_env="NO_KEY_HERE",
                                                 backoff_s=0.01, max_backoff_s=0.05, **config))


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


# -- item 14: a server that answers one request at a time ---------------------------------------------

def test_a_one_at_a_time_server_gets_fewer_requests_in_flight_and_answers_every_judgment(tmp_path, caplog):
    """4 requests in flight on a one-slot server: the 4th waits for 3 answers (0.8 s) and times out
    (0.7 s), and each abandoned request is still generated, so retries at 4 in flight keep timing out.
    At 2 in flight an answer takes at most 0.4 s: the judge lowers its concurrency and gets everything."""
    caplog.set_level(logging.INFO)
    candidate, reference = write_review_files(tmp_path, n_papers=4)
    with FakeJudgeServer(lambda n, body: prefers_candidate(n, body, delay_s=0.2), one_at_a_time=True) as server:
        # Giving up on a too-slow judge is the next test's subject: not in the way here on a loaded machine.
        backend = client(server, timeout_s=0.7, max_retries=6, max_timeouts_alone=6)
        summary = run_judge(candidate, reference, backend, JudgeRunConfig(output_dir=str(tmp_path / "o")),
                            progress=False)
    assert summary["missing_judgments"] == 0 and summary["judged_pairs"] == 4
    assert "lowering concurrency to 2" in caplog.text  # said, as it happens
    assert summary["concurrency"] == 4 and summary["concurrency_final"] in (1, 2)
    assert server.count <= 8 + 8  # not a storm of retries: a few timed-out requests during the change


def test_a_server_slower_than_the_timeout_stops_the_run_saying_to_raise_it(tmp_path, capsys):
    """Every answer takes 0.6 s against a 0.2 s timeout: after lowering to one request in flight and
    three more timeouts, the run stops (instead of 7 attempts x 6 judgments) and names --timeout."""
    candidate, reference = write_review_files(tmp_path)
    args = judge_args(candidate, reference, "openai:m", tmp_path / "o", "--timeout", "0.2", "--backoff", "0.01",
                      "--concurrency", "2")
    with FakeJudgeServer(lambda n, body: prefers_candidate(n, body, delay_s=0.6), one_at_a_time=True) as server:
        assert main([*args, "--base-url", server.url]) == 1
    assert server.count <= 2 + 1 + 3 + 2  # two at first, then one at a time, and a worker or two cancelled late
    err = capsys.readouterr().err
    assert "--timeout" in err and "rerun the same command to ask only those" in err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["missing_judgments"] == 6


# -- item 14: an error a retry cannot change ------------------------------------------------------------

FASTAPI_422 = Reply(422, raw=json.dumps({"detail": [{"loc": ["body", "response_format", "type"],
                                                      "msg": "Input should be 'text' or 'json_object'",
                                                      "type": "literal_error"}]}).encode())


@pytest.mark.parametrize("refusal", [LLAMA_CPP_REFUSAL, FASTAPI_422], ids=["llama-cpp-500", "fastapi-422"])
def test_a_refused_response_format_stops_at_once_with_the_servers_words_and_the_hint(tmp_path, capsys, refusal):
    candidate, reference = write_review_files(tmp_path)
    args = judge_args(candidate, reference, "openai:m", tmp_path / "o", "--json-mode", "schema",
                      "--backoff", "0.01")
    with FakeJudgeServer(prefers_candidate, response_formats=("json_object",), refuse_format=refusal) as server:
        started = time.monotonic()
        code = main([*args, "--base-url", server.url])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and "--json-mode off" in err
    assert "Input should be 'text' or 'json_object'" in err and f"HTTP {refusal.status}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert server.count <= 4  # each of the 4 workers at most once: never retried
    assert elapsed < 10


def test_a_transient_error_is_retried_and_the_log_shows_the_servers_own_text(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    busy = Reply(503, raw=b'{"error": {"message": "Loading model,\\n  please wait", "type": "unavailable"}}')
    with FakeJudgeServer(lambda n, body: busy if n <= 2 else prefers_candidate(n, body)) as server:
        answer = client(server).complete([{"role": "user", "content": "[Review A]x[End of review A]"}])
    assert "winner" in answer and server.count == 3
    assert "HTTP 503: Loading model, please wait" in caplog.text  # the body's message, on one line


# -- item 14: Ctrl-C ---------------------------------------------------------------------------------------

def test_ctrl_c_ends_the_command_within_seconds_keeping_every_finished_verdict(tmp_path):
    """Two answers arrive, then both workers wait on a server that takes 25 s: SIGINT must not wait for them."""
    candidate, reference = write_review_files(tmp_path, n_papers=4)
    out = tmp_path / "o"

    def two_then_slow(n, body):
        return prefers_candidate(n, body, delay_s=0 if n <= 2 else 25)

    with FakeJudgeServer(two_then_slow, lifetime_s=60) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reviewgpt", *judge_args(candidate, reference, "openai:m", out,
                                                           "--base-url", server.url, "--concurrency", "2")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            # A shell runs background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (
                server.count >= 4 and (out / CACHE_FILE).exists() and len(read_jsonl(out / CACHE_FILE)) == 2):
            time.sleep(0.05)
        assert proc.poll() is None and server.count == 4, "both workers must be waiting on the slow server"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        finally:
            proc.kill()
            err = proc.stderr.read().decode()
            proc.stderr.close()
        elapsed = time.monotonic() - started
    assert elapsed < 5, f"Ctrl-C took {elapsed:.1f} s"
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    cached = read_jsonl(out / CACHE_FILE)
    assert len(cached) == 2 and all(entry["status"] == "ok" for entry in cached)


# -- item 9: counts that agree ----------------------------------------------------------------------------

def test_counts_agree_in_summary_json_summary_md_and_the_last_line(tmp_path, capsys, caplog):
    """3 candidate papers, references (2 each) for 2 of them, every reference judged: 4 pairs, 8 judgments.
    The judge answers paper000 and fails paper001 (503): 1 paper judged, 2 pairs, 4 judgments missing."""
    caplog.set_level(logging.INFO)
    candidate, reference = write_review_files(tmp_path, references_per_paper=2, unreferenced=1)
    out = tmp_path / "o"
    args = judge_args(candidate, reference, "openai:m", out, "--pairing", "all", "--max-retries", "1",
                      "--backoff", "0.001")

    def fails_study_1(n, body):
        return Reply(503) if "Study 1" in body["messages"][-1]["content"] else prefers_candidate(n, body)

    with FakeJudgeServer(fails_study_1) as server:
        assert main([*args, "--base-url", server.url]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in ("candidate_papers", "reference_papers", "candidate_papers_without_reference",
                                    "papers_paired", "papers_judged")} == {
        "candidate_papers": 3, "reference_papers": 2, "candidate_papers_without_reference": 1,
        "papers_paired": 2, "papers_judged": 1}
    assert {k: summary[k] for k in ("pairs", "judged_pairs", "unparsable_pairs", "missing_pairs")} == {
        "pairs": 4, "judged_pairs": 2, "unparsable_pairs": 0, "missing_pairs": 2}
    assert {k: summary[k] for k in ("judgments", "judgments_asked", "judgments_answered", "judgments_cached",
                                    "unparsable_judgments", "missing_judgments")} == {
        "judgments": 8, "judgments_asked": 8, "judgments_answered": 4, "judgments_cached": 0,
        "unparsable_judgments": 0, "missing_judgments": 4}
    assert summary["overall"]["n"] == 2
    captured = capsys.readouterr()
    assert "over 2 judged pairs (1 paper)" in captured.out
    assert "judgments: 8 asked, 4 answered, 0 from the cache; 0 unparsable, 4 missing" in captured.out
    page = (out / "summary.md").read_text()
    assert "Papers judged: 1 of the 2 in both files" in page
    assert "Pairs: 4 (judged 2, unparsable 0, missing 2)" in page
    assert "Judgments: 8 (two per pair): 0 from the cache, 8 asked, 4 answered; unparsable 0; missing 4" in page
    said = [r for r in caplog.records if "no reference review" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "1 of 3 candidate papers" in said[0].getMessage()
    assert "no reference review" in page

    with FakeJudgeServer(prefers_candidate) as good:  # the rerun asks exactly the 4 missing
        assert main([*args, "--base-url", good.url]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert good.count == 4 and summary["judgments_asked"] == 4 and summary["judgments_cached"] == 4
    assert summary["papers_judged"] == 2 and summary["judged_pairs"] == 4 and summary["missing_judgments"] == 0
    assert "over 4 judged pairs (2 papers)" in capsys.readouterr().out


def test_a_judge_that_never_answered_judged_no_paper_and_says_so(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    candidate, reference = write_review_files(tmp_path)
    assert main(judge_args(candidate, reference, "openai:m", tmp_path / "o", "--base-url", dead,
                           "--backoff", "0.001")) == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["papers_judged"] == 0 and summary["judged_pairs"] == 0 and summary["papers_paired"] == 3
    assert summary["judgments_asked"] == 6 and summary["judgments_answered"] == 0
    out = capsys.readouterr().out
    assert "over 0 judged pairs (0 papers)" in out
    assert "6 asked, 0 answered, 0 from the cache; 0 unparsable, 6 missing" in out


# -- the shared HTTP parts --------------------------------------------------------------------------------

def test_error_text_is_the_servers_message_on_one_short_line():
    from reviewgpt.eval.http import error_text

    assert error_text(b'{"error": {"message": "bad\\n  thing"}}') == "bad thing"
    assert error_text(b'{"error": "plain"}') == "plain"
    assert error_text(b'{"detail": [{"loc": ["body", "x"], "msg": "Field required"}]}') == "body.x: Field required"
    assert error_text(b"<html><body><h1>502 Bad Gateway</h1></body></html>") == "502 Bad Gateway"
    assert error_text(b"") == ""
    assert error_text(LLAMA_CPP_REFUSAL.raw) == "body.response_format.type: Input should be 'text' or 'json_object'"
    long = error_text(json.dumps({"error": {"message": "x" * 1000}}).encode())
    assert len(long) <= 200 and long.endswith("...")


def test_the_gate_halves_once_per_round_of_timeouts_and_never_below_one():
    import threading

    from reviewgpt.eval.concurrency import ConcurrencyGate

    gate, cancelled = ConcurrencyGate(), threading.Event()
    tickets = [gate.enter(cancelled) for _ in range(4)]
    assert gate.in_flight == 4 and gate.limit is None
    assert gate.timed_out(tickets[3]) == (4, 2)
    assert gate.timed_out(tickets[2]) is None  # started before the change: already accounted for
    for _ in tickets:
        gate.leave()
    ticket = gate.enter(cancelled)
    assert gate.timed_out(ticket) == (2, 1)
    gate.leave()
    ticket = gate.enter(cancelled)
    assert ticket.alone and gate.timed_out(ticket) is None and gate.limit == 1
    # A request waiting for the one slot leaves as soon as the caller cancels.
    waiting = threading.Thread(target=lambda: tickets.append(gate.enter(cancelled)))
    waiting.start()
    cancelled.set()
    gate.wake_all()
    waiting.join(timeout=5)
    assert not waiting.is_alive() and tickets[-1] is None
