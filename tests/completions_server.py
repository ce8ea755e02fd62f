"""A fake OpenAI-compatible completions server on loopback for `reviewgpt review --server` tests.

`FakeCompletionsServer(script)` serves GET /v1/models (`models`: names, or dicts with an "id" and, like
vLLM, a "max_model_len"; None: 404) and POST /v1/completions on 127.0.0.1 with a random port. For each
completion request `script(n, body)` (n = 1-based request number, body = parsed JSON) returns a `Reply`.
It records every request body and its headers, the most requests it had in flight at once, refuses more
than `max_requests`, and stops itself after `lifetime_s`, so a failing test never leaves it running.
`one_at_a_time=True` answers one request at a time as llama.cpp's server does (a queued request whose
client timed out is still generated). `port` reopens a server where an earlier one was (a restart).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional


@dataclass
class Reply:
    status: int = 200
    text: str = "A fine review."
    finish_reason: Optional[str] = "stop"
    completion_tokens: Optional[int] = 4
    prompt_tokens: Optional[int] = None  # None: no usage.prompt_tokens
    delay_s: float = 0.0
    raw: Optional[bytes] = None  # a body sent as is
    headers: Dict[str, str] = field(default_factory=dict)


class FakeCompletionsServer:
    def __init__(self, script: Callable[[int, dict], Reply], models=("served-model",), max_requests: int = 100,
                 lifetime_s: float = 60.0, one_at_a_time: bool = False, port: int = 0):
        self.script, self.models, self.max_requests = script, models, max_requests
        self.requests: List[dict] = []
        self.headers: List[Dict[str, str]] = []
        self.paths: List[str] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        self._slot = threading.Lock() if one_at_a_time else contextlib.nullcontext()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.paths.append("GET " + self.path)
                if self.path != "/v1/models" or server.models is None:
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                data = [m if isinstance(m, dict) else {"id": m, "object": "model"} for m in server.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.paths.append("POST " + self.path)
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.requests)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/completions":
                        reply = Reply(404, raw=json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    elif n > server.max_requests:
                        reply = Reply(500, raw=b'{"error": "too many requests for this test"}')
                    else:
                        reply = server.script(n, body)
                    with server._slot:
                        time.sleep(reply.delay_s)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(reply.status, reply.raw if reply.raw is not None else _payload(n, body, reply),
                           reply.headers)

            def _send(self, status, payload, headers=None):
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeouts)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + "/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> FakeCompletionsServer:
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

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)


def _payload(n: int, body: dict, reply: Reply) -> bytes:
    if reply.status != 200:
        return json.dumps({"error": {"message": f"status {reply.status}"}}).encode()
    usage = {}
    if reply.completion_tokens is not None:
        usage["completion_tokens"] = reply.completion_tokens
    if reply.prompt_tokens is not None:
        usage["prompt_tokens"] = reply.prompt_tokens
    return json.dumps({"id": f"cmpl-{n}", "object": "text_completion", "model": body.get("model"),
                       "choices": [{"index": 0, "text": reply.text, "finish_reason": reply.finish_reason,
                                    "logprobs": None}],
                       **({"usage": usage} if usage else {})}).encode()
