"""Asking a JSON-over-HTTP server that may be slow, busy, failing, gone or refusing (standard library only).

`JSONEndpoint.post(payload, parse)` sends one POST and returns `parse(body)` (`get(parse)`: one GET). The
judge's chat-completions client uses it (`eval/judge/client.py`), and so does the completions client of
`reviewgpt review --server` (`eval/server.py`). What each failure does:

- **A refusal a retry cannot change stops the run at once** (`Refused`, a `UserError`: one line with the server's own
  words): 401/403 (the key), any other 4xx but 408/409/425/429, 501, and a 5xx whose text names the
  request's fields: llama-cpp-python answers a `response_format` it does not know with HTTP 500 and
  pydantic's "Input should be 'text' or 'json_object'", the same for every retry.
- **Busy or failing** (408/409/425/429, other 5xx, a 200 that `parse` refuses with `BadAnswer`): retried
  with exponential backoff and jitter, honouring `Retry-After`; the log shows the server's error text.
- **Slow** (no answer within `timeout_s`): a server with one slot (llama.cpp) queues concurrent requests,
  the queued ones time out, and it still generates every abandoned answer. `ConcurrencyGate` halves the
  requests in flight on a timeout, down to one, and says so. Timeouts in a row with one request in flight
  mean one answer takes longer than the timeout: after `max_timeouts_alone` the endpoint gives up.
- **Gone** (connection refused or dropped `max_connection_failures` times in a row, any request): gives up.

Giving up cancels every request (`cancel()`, also for Ctrl-C): backoffs and waits at the gate end at once,
nothing new is sent, and the calls raise `RequestFailed`; `gave_up` says why.

The API key is read from the named environment variable, sent only in the Authorization header and
scrubbed from every message; it is never logged.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, TypeVar

from reviewgpt.errors import UserError
from reviewgpt.eval.concurrency import ConcurrencyGate, Ticket

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_4XX = {408, 409, 425, 429}
# Words of a server refusing the request's shape rather than failing to serve it (pydantic, FastAPI,
# OpenAI-style validation); a 5xx saying them is not retried.
REQUEST_REFUSED = re.compile(
    r"input should be|validation error|response_format|field required|extra inputs are not permitted|"
    r"unexpected keyword argument", re.IGNORECASE)
ERROR_TEXT_CHARS = 200
ERROR_BODY_BYTES = 4096
_SAID_NO_KEY: set = set()


class RequestFailed(RuntimeError):
    """No answer after every retry, or the endpoint gave up or was cancelled; a rerun can ask again."""


class Refused(UserError):
    """The server refused the request itself (its HTTP `status` says how); a retry would not change it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BadAnswer(ValueError):
    """Raised by a `parse` function: the body of a 200 is not the expected answer (retried)."""


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float = 120.0  # seconds to wait for one answer
    max_retries: int = 6  # retries of a transient failure
    backoff_s: float = 2.0  # first wait before a retry; doubles each time
    max_backoff_s: float = 60.0  # longest wait between retries
    max_connection_failures: int = 3  # connection errors in a row (any request): the server is gone
    max_timeouts_alone: int = 3  # timeouts in a row with one request in flight: answers take too long

    def __post_init__(self):
        for name in ("backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, not {self.timeout_s!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries!r}")
        for name in ("max_connection_failures", "max_timeouts_alone"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)!r}")

    def backoff(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        wait *= random.uniform(0.5, 1.0)  # jitter: concurrent workers do not retry in lock-step
        if retry_after and retry_after.strip().replace(".", "", 1).isdigit():  # seconds; an HTTP date is ignored
            wait = max(wait, min(self.max_backoff_s, float(retry_after)))
        return wait


def error_text(body: bytes, limit: int = ERROR_TEXT_CHARS) -> str:
    """The server's own words from an error body, on one line of at most `limit` characters: OpenAI's,
    vLLM's and llama.cpp's `{"error": {"message"}}`, `{"error": "..."}`, FastAPI's `{"detail": [...]}`,
    else the text itself (an HTML error page without its tags)."""
    text = body.decode("utf-8", "replace")
    try:
        message = _message(json.loads(text))
    except ValueError:
        message = None
    if message is not None:
        message = _pydantic_repr(message) or message
    else:
        message = re.sub(r"<(head|style|script)\b.*?</\1>|<[^>]+>", " ", text, flags=re.IGNORECASE | re.DOTALL)
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _pydantic_repr(text: str) -> str | None:
    """"body.response_format.type: Input should be ..." from pydantic's errors printed as Python dicts, as
    llama-cpp-python's server sends them (`{'type': ..., 'loc': ('body', ...), 'msg': "..."}`, a traceback)."""
    found = re.search(r"""'loc': \(([^)]*)\), 'msg': (?:"([^"]*)"|'([^']*)')""", text)
    if not found:
        return None
    where = ".".join(part.strip(" '\"") for part in found.group(1).split(",") if part.strip(" '\""))
    return f"{where}: {found.group(2) or found.group(3)}"


def _message(data) -> str | None:
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        parts = [m for m in (_message(item) for item in data) if m]
        return "; ".join(parts) or None
    if isinstance(data, dict):
        if "msg" in data and isinstance(data.get("loc"), list):  # FastAPI: where in the request, and what
            return ".".join(str(p) for p in data["loc"]) + ": " + str(data["msg"])
        for key in ("error", "message", "detail", "msg"):
            if data.get(key):
                return _message(data[key])
    return None


class JSONEndpoint:
    """POST JSON to `url`, with the retries, backoff, concurrency and refusals described in the module doc.

    `name` says who answers in messages ("the judge"); `refusal_advice(status, text)` ends the message of a
    refusal with what to change (a flag), since only the caller knows its flags, and `shorter_answers` names
    the flag that shortens answers, for a server too slow for the timeout."""

    def __init__(self, url: str, policy: RetryPolicy, api_key_env: str, name: str = "the server",
                 refusal_advice: Callable[[int, str], str] | None = None, sleep=None,
                 shorter_answers: str = "--max-tokens"):
        self.url, self.policy, self.name, self.api_key_env = url, policy, name, api_key_env
        self._api_key = os.environ.get(api_key_env, "")
        self._refusal_advice = refusal_advice or (lambda status, text: "check the URL and the model name")
        self.gate = ConcurrencyGate()
        self._cancelled = threading.Event()
        # Waiting on the event, not time.sleep: `cancel()` (Ctrl-C, a fatal error) ends a backoff at once.
        self._sleep = sleep or self._cancelled.wait
        self._lock = threading.Lock()
        self._connection_failures = 0  # in a row, across every request and thread
        self._timeouts_alone = 0  # in a row, requests sent with nothing else in flight
        self.gave_up: str | None = None  # why the endpoint stopped asking
        self._shorter_answers = shorter_answers
        if not self._api_key and api_key_env not in _SAID_NO_KEY:
            _SAID_NO_KEY.add(api_key_env)  # once per process: a client may use several endpoints
            log.info("%s is not set: sending requests without an API key (fine for local servers)", api_key_env)

    def __repr__(self) -> str:  # never show the key
        return f"JSONEndpoint(url={self.url!r})"

    @property
    def stopped(self) -> bool:
        """Cancelled, or given up: every request from now on fails at once."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop: nothing new is sent, backoffs and waits for a slot end now; requests on the wire are left."""
        self._cancelled.set()
        self.gate.wake_all()

    def post(self, payload: dict, parse: Callable[[bytes], T]) -> T:
        return self._ask(json.dumps(payload).encode("utf-8"), parse)

    def get(self, parse: Callable[[bytes], T]) -> T:
        return self._ask(None, parse)

    def _ask(self, body: bytes | None, parse: Callable[[bytes], T]) -> T:
        policy, problem = self.policy, ""
        for attempt in range(policy.max_retries + 1):
            if self._cancelled.is_set():
                raise RequestFailed(f"{self.url}: cancelled ({problem or 'run stopped'})")
            retry_after = None
            ticket = self.gate.enter(self._cancelled)
            if ticket is None:
                raise RequestFailed(f"{self.url}: cancelled while waiting to send ({problem or 'run stopped'})")
            try:
                with urllib.request.urlopen(self._request("GET" if body is None else "POST"), data=body,
                                            timeout=policy.timeout_s) as response:
                    answer = response.read()
            except urllib.error.HTTPError as exc:
                text = self._scrub(error_text(exc.read(ERROR_BODY_BYTES)))
                self._stop_if_refused(exc.code, text)
                self._reached()
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                problem = f"HTTP {exc.code}: {text}" if text else f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    problem = f"no answer within {policy.timeout_s:g} s"
                    self._timed_out(ticket)
                else:
                    problem = self._scrub(f"{type(reason).__name__}: {reason}")
                    self._connection_failed(problem)
            else:
                self._reached()
                try:
                    return parse(answer)
                except BadAnswer as exc:
                    problem = f"not the expected answer ({self._scrub(str(exc))})"
            finally:
                self.gate.leave()
            if attempt < policy.max_retries:
                wait = policy.backoff(attempt, retry_after)
                log.info("%s: request failed (%s); retry %d/%d in %.1f s", self.name, problem, attempt + 1,
                         policy.max_retries, wait)
                self._sleep(wait)
        raise RequestFailed(f"{self.url}: {problem} after {policy.max_retries + 1} attempts")

    def _request(self, method: str) -> urllib.request.Request:
        headers = {"Accept": "application/json"}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(self.url, method=method, headers=headers)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _stop_if_refused(self, status: int, text: str) -> None:
        if status in (401, 403):
            raise Refused(status, f"{self.name} at {self.url} refused the API key (HTTP {status}); set "
                            f"{self.api_key_env} to a valid key or pass --api-key-env NAME.")
        refused = (400 <= status < 500 and status not in RETRYABLE_4XX) or status == 501 or (
            status >= 500 and REQUEST_REFUSED.search(text))
        if refused:
            raise Refused(status, f"{self.name} at {self.url} answered HTTP {status} ({text or 'no error text'}), "
                            f"a refusal of the request itself that a retry would not change; "
                            f"{self._refusal_advice(status, text)}.")

    def _reached(self) -> None:
        """The server answered (anything): it is there, and it answers within the timeout."""
        with self._lock:
            self._connection_failures = self._timeouts_alone = 0

    def _timed_out(self, ticket: Ticket) -> None:
        changed = self.gate.timed_out(ticket)
        if changed:
            log.warning("%s at %s gave no answer within %g s with %d requests in flight: lowering concurrency "
                        "to %d (a server that answers one request at a time queues the others)",
                        self.name, self.url, self.policy.timeout_s, changed[0], changed[1])
        if ticket.alone:
            with self._lock:
                self._timeouts_alone += 1
                alone = self._timeouts_alone
            if alone >= self.policy.max_timeouts_alone:
                self._give_up(f"{self.url} gave no answer within {self.policy.timeout_s:g} s {alone} times in a "
                              "row with one request at a time: its answers take longer than that; pass a larger "
                              f"--timeout (or a smaller {self._shorter_answers})")

    def _connection_failed(self, problem: str) -> None:
        with self._lock:
            self._connection_failures += 1
            failures = self._connection_failures
        if failures >= self.policy.max_connection_failures:
            self._give_up(f"{self.url} refused or dropped {failures} connections in a row ({problem})")

    def _give_up(self, why: str) -> None:
        with self._lock:
            first = self.gave_up is None
            if first:
                self.gave_up = why
        if first:
            log.warning("%s looks unusable: %s; not asking the rest", self.name, why)
        self.cancel()
        raise RequestFailed(self.gave_up)
