"""`reviewgpt review --server URL` against a fake OpenAI-compatible completions server on loopback
(tests/completions_server.py), which records every request. The real llama-cpp-python server is
`nox -s llamacpp` (scripts/check_llamacpp_server.py).

Only these tests open sockets, and only to 127.0.0.1 (pytest-socket `allow_hosts`).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time

import pytest

from reviewgpt.cli import main
from reviewgpt.data.sample import write_sample
from reviewgpt.data.tokenization import PromptEncoder
from reviewgpt.eval.generate import GenerationSettings, generate_reviews
from reviewgpt.eval.server import CompletionsServer, ServerConfig
from tests.completions_server import FakeCompletionsServer, Reply

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

SECRET = "sk-test-SECRET-0123456789"
KEY_ENV = "REVIEWGPT_TEST_KEY"
FAST = dict(backoff_s=0.001, max_backoff_s=0.05)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def papers_file(tmp_path, n=3):
    return write_sample(tmp_path / "papers.jsonl", n_papers=n, reviews_per_paper=1)


def served(server, **overrides):
    return CompletionsServer(ServerConfig(url=server.url, api_key_env=KEY_ENV, **{**FAST, **overrides}))


def error_line(err: str) -> str:
    """The command's error: one line (after the progress bar's, when reviews were being written)."""
    lines = [line for line in err.splitlines() if line.startswith("reviewgpt review: error:")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n") and "Traceback" not in err, err
    return lines[0]


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def cli_args(model, papers, output, server_url, *extra):
    return ["review", "--model", str(model), "--papers", str(papers), "--output", str(output), "--server", server_url,
            "--api-key-env", KEY_ENV, "--backoff", "0.001", "--max-new-tokens", "8", *extra]


def like_vllm(tokenizer, stop: str):
    """A server that tokenizes the prompt text as vLLM does (the model's tokenizer, special tokens added)
    and reports the count; its text goes on past a stop string, as vLLM's does with include_stop_str_in_output."""
    return lambda n, body: Reply(text=f" Strengths: clear.{stop}\nignored", completion_tokens=5,
                                 prompt_tokens=len(tokenizer(body["prompt"]).input_ids))


@pytest.fixture
def spy_prompts(monkeypatch):
    """{paper text: prompt ids} of every prompt `review` builds (local or server), for comparisons."""
    built = {}
    original = PromptEncoder.encode_prompt

    def encode_prompt(self, paper, budget):
        result = original(self, paper, budget)
        built[paper] = result[0]
        return result

    monkeypatch.setattr(PromptEncoder, "encode_prompt", encode_prompt)
    return built


@pytest.mark.parametrize("family", ["gemma", "mistral", "llama"])
def test_the_server_gets_the_local_prompt_text_stops_and_settings_and_rows_match_the_local_ones(
        family, tiny_models, tmp_path, spy_prompts, caplog):
    from reviewgpt.models import load_tokenizer

    model = tiny_models[family]
    tokenizer = load_tokenizer(str(model), family)
    papers = papers_file(tmp_path)
    settings = GenerationSettings(max_input_tokens=200, max_new_tokens=8, temperature=0.7, top_p=0.9,
                                  repetition_penalty=1.3)
    generate_reviews(model, papers, tmp_path / "local.jsonl", settings)
    local_ids = dict(spy_prompts)
    spy_prompts.clear()
    caplog.set_level(logging.DEBUG)
    stop_text = {"gemma": ["<end_of_turn>", "<eos>"], "mistral": ["</s>"], "llama": ["<|im_end|>"]}[family]
    with FakeCompletionsServer(like_vllm(tokenizer, stop_text[0])) as server:
        summary = generate_reviews(model, papers, tmp_path / "served.jsonl", settings, server=served(server))
    assert server.count == 3 and summary["written"] == 3 and summary["server_prompt_tokens_differ"] == 0
    assert spy_prompts == local_ids  # the same prompts as local generation: template, budget, trimmed paper
    for body in server.requests:
        ids = next(ids for ids in local_ids.values() if tokenizer(body["prompt"]).input_ids == ids)
        # The exact text: the ids decoded, without a BOS the server's tokenizer adds again.
        bos = 1 if ids[0] == tokenizer.bos_token_id and family != "llama" else 0
        assert body["prompt"] == tokenizer.decode(ids[bos:], skip_special_tokens=False,
                                                  clean_up_tokenization_spaces=False)
        assert body["stop"] == stop_text
        assert body["stop_token_ids"] == list(dict.fromkeys(
            [tokenizer.eos_token_id, *[tokenizer.convert_tokens_to_ids(s) for s in stop_text]]))
        assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == ("served-model", 8, 0.7, 0.9)
        assert body["repetition_penalty"] == body["repeat_penalty"] == 1.3
    assert {h["Authorization"] for h in server.headers} == {f"Bearer {SECRET}"}
    local, remote = read_jsonl(tmp_path / "local.jsonl"), read_jsonl(tmp_path / "served.jsonl")
    assert [list(row) for row in remote] == [list(local[0])] * 3  # the same fields, in the same order
    by_id = {row["id"]: row for row in local}
    for row in remote:
        same = ("paper_id", "template", "input_tokens", "paper_tokens", "paper_truncated")
        assert {k: row[k] for k in same} == {k: by_id[row["id"]][k] for k in same}
        assert row["review"] == "Strengths: clear."  # cut at the stop string, stripped
        assert (row["generated_tokens"], row["finish_reason"]) == (5, "stop")
        assert row["model"] == f"served-model at {server.url}"
        assert row["model_fingerprint"] == f"server:{server.url}|served-model"
    assert any(row["paper_truncated"] for row in remote)
    assert SECRET not in (tmp_path / "served.jsonl").read_text() and SECRET not in caplog.text


def test_only_the_tokenizer_is_loaded_and_a_tokenizer_folder_alone_is_enough(tiny_llama, tmp_path, monkeypatch):
    import reviewgpt.models

    def no_weights(*args, **kwargs):
        raise AssertionError("--server loaded a model")

    monkeypatch.setattr(reviewgpt.models, "load_for_inference", no_weights)
    tokenizer_only = tmp_path / "tokenizer"
    tokenizer_only.mkdir()
    for path in tiny_llama.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(path, tokenizer_only)
    out = tmp_path / "reviews.jsonl"
    with FakeCompletionsServer(lambda n, body: Reply(text=" A review. ", finish_reason="length")) as server:
        code = main(["review", "--tokenizer", str(tokenizer_only), "--server", server.url, "--papers",
                     str(papers_file(tmp_path)), "--output", str(out), "--api-key-env", KEY_ENV])
    assert code == 0 and server.count == 3
    rows = read_jsonl(out)
    # The template comes from the tokenizer's chat template; no config.json: the reference budget.
    assert {(r["template"], r["review"], r["finish_reason"]) for r in rows} == {
        ("smollm2-chatml", "A review.", "length")}
    assert server.requests[0]["prompt"].startswith("<|im_start|>system\n")


def test_a_run_that_stops_keeps_its_lines_and_a_rerun_asks_only_the_missing_papers(tiny_gemma, tmp_path, capsys):
    papers, out = papers_file(tmp_path, n=5), tmp_path / "reviews.jsonl"

    def args(url):
        return cli_args(tiny_gemma, papers, out, url, "--concurrency", "1", "--max-retries", "1")

    with FakeCompletionsServer(lambda n, body: Reply() if n <= 2 else Reply(503)) as failing:
        assert main(args(failing.url)) == 2
    err = error_line(capsys.readouterr().err)
    assert "2 of 5 review(s) written" in err and "HTTP 503" in err
    first = read_jsonl(out)
    assert len(first) == 2
    port = failing.httpd.server_address[1]
    with FakeCompletionsServer(lambda n, body: Reply(), port=port) as good:  # the server, restarted
        assert main(args(good.url)) == 0
    rows = read_jsonl(out)
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5 and rows[:2] == first
    assert good.count == 3  # only the missing ones ...
    asked = {body["prompt"] for body in good.requests}
    assert not asked & {body["prompt"] for body in failing.requests[:2]}  # ... not the two already written
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2
    with FakeCompletionsServer(lambda n, body: Reply()) as third:
        assert main(args(third.url)) == 2  # another server, serving a model of the same name
    assert third.count == 0
    assert f"a review by another model (served-model at {good.url}" in error_line(capsys.readouterr().err)


def test_reviews_of_another_served_model_are_not_mixed_into_the_file(tiny_gemma, tmp_path, capsys):
    papers, out = papers_file(tmp_path), tmp_path / "reviews.jsonl"
    with FakeCompletionsServer(lambda n, body: Reply(), models=["model-a", "model-b"]) as server:
        assert main([*cli_args(tiny_gemma, papers, out, server.url), "--limit", "1", "--server-model", "model-a"]) == 0
        assert main(cli_args(tiny_gemma, papers, out, server.url, "--server-model", "model-b")) == 2
        assert f"a review by another model (model-a at {server.url}" in capsys.readouterr().err
        assert main(cli_args(tiny_gemma, papers, out, server.url)) == 2  # two served, none named
        assert "serves 2 models ('model-a', 'model-b'); pass --server-model NAME" in capsys.readouterr().err
        assert main(cli_args(tiny_gemma, papers, out, server.url, "--server-model", "model-c")) == 2
        assert "does not serve --server-model 'model-c'" in capsys.readouterr().err
        assert server.count == 1
    assert {r["model_fingerprint"] for r in read_jsonl(out)} == {f"server:{server.url}|model-a"}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_dead_server_is_one_line_and_exit_2(tiny_gemma, tmp_path, capsys):
    out = tmp_path / "reviews.jsonl"
    started = time.time()
    assert main(cli_args(tiny_gemma, papers_file(tmp_path), out, closed_port_url())) == 2
    err = error_line(capsys.readouterr().err)
    assert "no answer from the server at http://127.0.0.1:" in err and "start it" in err
    assert time.time() - started < 10 and not out.exists()


@pytest.mark.parametrize("status, words", [
    (401, f"refused the API key (HTTP 401); set {KEY_ENV} to a valid key"),
    (404, "answered HTTP 404 (The model `served-model` does not exist.)"),
    (400, "This model's maximum context length is 100 tokens"),
])
def test_a_refusal_stops_at_once_with_one_line_keeping_written_reviews(tiny_gemma, tmp_path, capsys, status, words):
    def script(n, body):
        if n == 1:
            return Reply()
        message = {401: "Incorrect API key provided", 404: "The model `served-model` does not exist.",
                   400: "This model's maximum context length is 100 tokens"}[status]
        return Reply(status, raw=json.dumps({"error": {"message": message}}).encode())

    out = tmp_path / "reviews.jsonl"
    with FakeCompletionsServer(script) as server:
        assert main(cli_args(tiny_gemma, papers_file(tmp_path, n=4), out, server.url, "--concurrency", "1")) == 2
    err = error_line(capsys.readouterr().err)
    assert words in err and "1 of 4 review(s) written" in err and SECRET not in err
    assert server.count == 2 and len(read_jsonl(out)) == 1  # no retry of a refusal; the written line stays
    if status == 400:
        assert "--max-input-tokens" in err and "--n_ctx" in err


def test_no_models_route_needs_the_model_named(tiny_gemma, tmp_path, capsys):
    papers, out = papers_file(tmp_path), tmp_path / "reviews.jsonl"
    with FakeCompletionsServer(lambda n, body: Reply(), models=None) as server:
        assert main(cli_args(tiny_gemma, papers, out, server.url)) == 2
        assert "HTTP 404" in capsys.readouterr().err
        assert main(cli_args(tiny_gemma, papers, out, server.url, "--server-model", "named")) == 0
    assert {body["model"] for body in server.requests} == {"named"} and len(read_jsonl(out)) == 3


def test_a_server_slower_than_the_timeout_stops_with_one_line_naming_timeout(tiny_gemma, tmp_path, capsys):
    def script(n, body):
        return Reply() if n == 1 else Reply(delay_s=0.6)

    out = tmp_path / "reviews.jsonl"
    with FakeCompletionsServer(script, one_at_a_time=True) as server:
        code = main(cli_args(tiny_gemma, papers_file(tmp_path, n=4), out, server.url, "--timeout", "0.2",
                             "--concurrency", "2"))
    err = error_line(capsys.readouterr().err)
    assert code == 2 and "--timeout" in err and "review(s) written" in err
    assert len(read_jsonl(out)) >= 1 and server.count <= 2 + 1 + 3 + 2


def test_several_requests_in_flight_and_fewer_after_timeouts(tiny_gemma, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    papers = papers_file(tmp_path, n=6)
    with FakeCompletionsServer(lambda n, body: Reply(delay_s=0.3)) as parallel:
        generate_reviews(tiny_gemma, papers, tmp_path / "a.jsonl", GenerationSettings(max_new_tokens=8),
                         server=served(parallel, concurrency=3))
    assert parallel.most_in_flight == 3
    # One slot, as llama.cpp's server: with 4 in flight the 4th waits 0.6 s and times out (0.5 s).
    with FakeCompletionsServer(lambda n, body: Reply(delay_s=0.2), one_at_a_time=True) as one_slot:
        summary = generate_reviews(tiny_gemma, papers, tmp_path / "b.jsonl", GenerationSettings(max_new_tokens=8),
                                   server=served(one_slot, concurrency=4, timeout_s=0.5, max_timeouts_alone=6))
    assert summary["written"] == 6 and len(read_jsonl(tmp_path / "b.jsonl")) == 6
    assert "lowering concurrency to 2" in caplog.text and summary["concurrency_final"] in (1, 2)


def test_the_servers_context_length_caps_the_prompt(tiny_gemma, tmp_path):
    with FakeCompletionsServer(lambda n, body: Reply(), models=[{"id": "m", "max_model_len": 216}]) as server:
        summary = generate_reviews(tiny_gemma, papers_file(tmp_path), tmp_path / "r.jsonl",
                                   GenerationSettings(max_new_tokens=16), server=served(server))
    assert summary["max_input_tokens"] == 200
    assert max(row["input_tokens"] for row in read_jsonl(tmp_path / "r.jsonl")) <= 200


def test_finish_reasons_usage_and_malformed_answers(tiny_gemma, gemma_tokenizer, tmp_path, caplog):
    replies = {1: Reply(raw=b"<html>gateway hiccup</html>"), 2: Reply(finish_reason=None),
               3: Reply(text="one two", finish_reason="eos_token", completion_tokens=None, prompt_tokens=1),
               4: Reply(finish_reason="length", completion_tokens=8, prompt_tokens=2)}
    with FakeCompletionsServer(lambda n, body: replies[n]) as server:
        summary = generate_reviews(tiny_gemma, papers_file(tmp_path, n=2), tmp_path / "r.jsonl",
                                   GenerationSettings(max_new_tokens=8), server=served(server, concurrency=1))
    rows = read_jsonl(tmp_path / "r.jsonl")
    assert server.count == 4  # an answer that is not a finished completion is asked again
    # TGI's "eos_token" is a stop; without usage, the review's own tokens are counted.
    counted = len(gemma_tokenizer.encode("one two", add_special_tokens=False))
    assert [(r["finish_reason"], r["generated_tokens"]) for r in rows] == [("stop", counted), ("length", 8)]
    # The server's prompt counts differ from ours: said once, counted in the summary.
    assert summary["server_prompt_tokens_differ"] == 2 and caplog.text.count("tokenizes the prompt otherwise") == 1


def test_flags_that_need_or_exclude_server(tiny_gemma, tmp_path, capsys):
    papers, out = str(papers_file(tmp_path)), str(tmp_path / "r.jsonl")
    cases = [
        (["--papers", papers, "--output", out, "--server", "http://127.0.0.1:9/v1"], "--server needs --model DIR"),
        (["--model", str(tiny_gemma), "--papers", papers, "--output", out, "--tokenizer", "x"], "--tokenizer is for"),
        (["--papers", papers, "--output", out], "pass --model DIR"),
        (["--model", str(tiny_gemma), "--papers", papers, "--output", out, "--server", "http://127.0.0.1:9/v1",
          "--4bit"], "--4bit/--no-4bit load a model here"),
        (["--model", str(tiny_gemma), "--papers", papers, "--output", out, "--server", "localhost:8000"],
         "url must start with http://"),
    ]
    for args, words in cases:
        assert main(["review", *args]) == 2
        assert words in error_line(capsys.readouterr().err)


def test_server_config_checks_its_values():
    with pytest.raises(ValueError, match="concurrency must be >= 1, not 0"):
        ServerConfig(url="http://x/v1", concurrency=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ServerConfig(url="http://x/v1", timeout_s=0)
    assert "SECRET" not in repr(CompletionsServer(ServerConfig(url="http://x/v1/", api_key_env=KEY_ENV)))
    assert CompletionsServer(ServerConfig(url="http://x/v1/", model="m")).fingerprint == "server:http://x/v1|m"
