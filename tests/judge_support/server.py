"""A fake chat-completions server on loopback for the judge's HTTP tests.

`FakeJudgeServer(script)` serves POST /v1/chat/completions on 127.0.0.1 with a random port. For
each request, `script(n, body)` (n = 1-based request number, body = parsed JSON) returns a
`Reply` (status, content, headers, delay, raw body). The server runs in a daemon thread, records
every request, refuses more than `max_requests` (500) and stops itself after `lifetime_s`, so a
failing test can never leave it running. Like a real server it checks `response_format`: a type
not in `response_formats` gets `refuse_format` (HTTP 400; llama-cpp-python answers 500 with
pydantic's text, `LLAMA_CPP_REFUSAL`), and a `json_schema` must carry a schema.

`one_at_a_time=True` is llama.cpp's server with one slot: requests queue and are answered in turn,
each taking its `delay_s`, and a request whose client has gone (timed out) is still generated to
the end, as the real server does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List

from reviewgpt.eval.judge.prompt import QUESTIONS


@dataclass
class Reply:
    status: int = 200
    content: str = ""  # the assistant message content (status 200)
    headers: Dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None  # a body sent as is (malformed wire responses)


# What llama-cpp-python 0.3.36's server answers a `json_schema` response_format (recorded): its request
# model allows only "text" and "json_object", and its error handler turns pydantic's complaint, with a
# traceback line, into an HTTP 500.
LLAMA_CPP_REFUSAL = Reply(500, raw=json.dumps({"error": {
    "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
               "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': "
               "\"'text' or 'json_object'\"}}\n\n  File \"/venv/llama_cpp/server/app.py\", "
               "line 376, in create_chat_completion\n    POST /v1/chat/completions",
    "type": "internal_server_error", "param": None, "code": None}}).encode())


def verdict_json(winners: Dict[str, str] | str) -> str:
    """A well-formed judge answer; `winners` is one winner for all questions or a dict per question."""
    if isinstance(winners, str):
        winners = dict.fromkeys(QUESTIONS, winners)
    return json.dumps({q: {"winner": winners[q], "reason": f"because of {q}"} for q in QUESTIONS})


def candidate_is(messages, marker: str) -> str:
    """Which position ("A"/"B") holds the review containing `marker` in the judge prompt."""
    user = messages[-1]["content"]
    a = user.split("[Review A]")[1].split("[End of review A]")[0]
    return "A" if marker in a else "B"


class FakeJudgeServer:
    def __init__(
        self,
        script: Callable[[int, dict], Reply],
        max_requests: int = 200,
        lifetime_s: float = 30.0,
        response_formats=("json_object", "json_schema"),
        refuse_format: Reply | None = None,
        one_at_a_time: bool = False,
    ):
        self.script = script
        self.response_formats = tuple(response_formats)
        self.refuse_format = refuse_format or Reply(
            400, raw=b'{"error": {"message": "response_format is not supported"}}')
        self._slot = threading.Lock() if one_at_a_time else contextlib.nullcontext()
        self.max_requests = max_requests
        self.requests: List[dict] = []
        self.headers: List[Dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a client that never finishes its request cannot pin a thread

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.requests)
                if n > server.max_requests or self.path != "/v1/chat/completions":
                    reply = Reply(500, raw=b'{"error": "too many requests for this test"}')
                elif not server.accepts_format(body.get("response_format")):
                    reply = server.refuse_format
                else:
                    reply = server.script(n, body)
                with server._slot:  # generating (one request at a time with one_at_a_time)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.status == 200:
                    payload = json.dumps(
                        {
                            "id": f"cmpl-{n}",
                            "object": "chat.completion",
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply.content},
                                }
                            ],
                        }
                    ).encode()
                else:
                    payload = json.dumps({"error": {"message": f"status {reply.status}"}}).encode()
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def accepts_format(self, response_format) -> bool:
        if response_format is None:
            return True
        kind = response_format.get("type")
        if kind == "json_schema" and "schema" not in response_format.get("json_schema", {}):
            return False
        return kind in self.response_formats

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)
