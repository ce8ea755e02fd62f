"""An OpenAI-compatible chat-completions client (standard library only).

Works with OpenAI and with servers that speak its wire format (vLLM, llama.cpp, TGI) through
`base_url`. Transient failures - HTTP 429, any 5xx, timeouts, dropped connections, a 200 whose
body is not a chat completion - are retried with exponential backoff (honouring `Retry-After`);
mistakes a retry cannot fix (bad key, unknown model) stop the run with a `UserError`. A server
that is gone (`max_connection_failures` connection errors in a row, across all requests) stops
every request at once instead of retrying each one: the run ends with those judgments missing,
and a rerun asks only them.

`json_mode` asks the server for JSON output (`response_format`): `object` is OpenAI's JSON mode,
`schema` a JSON Schema of the verdict (`json_schema`, which constrains small judges that otherwise
answer in prose).

The API key is read from an environment variable, kept in a private attribute, sent only in the
Authorization header and scrubbed from every message; it is never logged or written.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List

from reviewgpt.errors import UserError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429}  # plus every 5xx
JSON_MODES = ("off", "object", "schema")


class JudgeRequestError(RuntimeError):
    """The judge did not answer after all retries; the judgment stays missing and a rerun asks it."""


@dataclass(frozen=True)
class HTTPJudgeConfig:
    model: str = field(metadata={"help": "model name the server knows, e.g. gpt-4-1106-preview"})
    base_url: str = field(default="https://api.openai.com/v1", metadata={"help": "the API root (…/v1)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable with the key"})
    timeout_s: float = field(default=120.0, metadata={"help": "seconds to wait for one answer"})
    max_retries: int = field(default=6, metadata={"help": "retries of a transient failure"})
    backoff_s: float = field(default=2.0, metadata={"help": "first wait before a retry; doubles each time"})
    max_backoff_s: float = field(default=60.0, metadata={"help": "longest wait between retries"})
    temperature: float = 0.0
    max_tokens: int = 1024
    json_mode: str = field(default="off", metadata={"help": "response_format: off, object (JSON mode) or schema"})
    max_connection_failures: int = field(
        default=3, metadata={"help": "connection errors in a row (any request) after which the judge counts as gone"}
    )

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be a non-empty model name")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, not {self.timeout_s!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, not {self.max_tokens!r}")
        if self.json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {JSON_MODES}, not {self.json_mode!r}")
        if self.max_connection_failures < 1:
            raise ValueError(f"max_connection_failures must be >= 1, not {self.max_connection_failures!r}")

    def response_format(self) -> dict | None:
        from reviewgpt.eval.judge.prompt import verdict_schema

        if self.json_mode == "object":
            return {"type": "json_object"}
        if self.json_mode == "schema":
            return {"type": "json_schema", "json_schema": {"name": "review_verdict", "strict": True,
                                                           "schema": verdict_schema()}}
        return None


class ChatCompletionsClient:
    """`complete(messages) -> str`: the assistant's text for one chat-completions request."""

    def __init__(self, config: HTTPJudgeConfig, sleep=None):
        self.config = config
        self._api_key = os.environ.get(config.api_key_env, "")
        self._cancelled = threading.Event()
        self._failures_lock = threading.Lock()
        self._connection_failures = 0  # in a row, across every request and thread
        self.gave_up: str | None = None  # why the client stopped asking (the judge is gone)
        # Waiting on the event, not time.sleep: `cancel()` (Ctrl-C, a fatal error) ends a backoff at once.
        self._sleep = sleep or self._cancelled.wait
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        if not self._api_key:
            log.info(
                "%s is not set: sending requests without an API key (fine for local servers)",
                config.api_key_env,
            )

    def __repr__(self) -> str:  # never show the key
        return f"ChatCompletionsClient(model={self.config.model!r}, url={self.url!r})"

    @property
    def identity(self) -> str:
        """What decides the answers (cache key part): not the URL or key, which only transport it."""
        c = self.config
        json_mode = f"|json={c.json_mode}" if c.json_mode != "off" else ""  # "off" keeps earlier caches valid
        return f"openai:{c.model}|temperature={c.temperature}|max_tokens={c.max_tokens}{json_mode}"

    def cancel(self) -> None:
        """Stop retrying: requests already on the wire finish, nothing new is sent."""
        self._cancelled.set()

    def _connection_failed(self, problem: str) -> None:
        """Count a connection error; after `max_connection_failures` in a row, stop every request."""
        with self._failures_lock:
            self._connection_failures += 1
            gone = self._connection_failures >= self.config.max_connection_failures
            if gone and self.gave_up is None:
                self.gave_up = (f"{self.url} refused or dropped {self._connection_failures} connections in a row "
                                f"({problem})")
                log.warning("the judge looks gone: %s; not asking the remaining judgments", self.gave_up)
        if gone:
            self.cancel()
            raise JudgeRequestError(self.gave_up)

    def _answered(self) -> None:
        with self._failures_lock:
            self._connection_failures = 0

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request(self) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(self.url, method="POST", headers=headers)

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        c = self.config
        wait = min(c.max_backoff_s, c.backoff_s * (2**attempt))
        wait *= random.uniform(0.5, 1.0)  # jitter: concurrent workers do not retry in lock-step
        if (
            retry_after and retry_after.strip().replace(".", "", 1).isdigit()
        ):  # seconds; an HTTP date is ignored
            wait = max(wait, min(c.max_backoff_s, float(retry_after)))
        return wait

    def complete(self, messages: List[Dict[str, str]]) -> str:
        c = self.config
        request = {"model": c.model, "messages": messages, "temperature": c.temperature, "max_tokens": c.max_tokens}
        if c.response_format():
            request["response_format"] = c.response_format()
        body = json.dumps(request).encode("utf-8")
        last_problem = ""
        for attempt in range(c.max_retries + 1):
            if self._cancelled.is_set():
                raise JudgeRequestError(f"{self.url}: cancelled ({last_problem or 'run stopped'})")
            retry_after = None
            try:
                with urllib.request.urlopen(self._request(), data=body, timeout=c.timeout_s) as response:
                    payload = response.read()
                self._answered()
                return _assistant_text(payload)
            except urllib.error.HTTPError as exc:
                detail = self._scrub(exc.read(300).decode("utf-8", "replace").strip())
                if exc.code in (401, 403):
                    raise UserError(
                        f"the judge at {self.url} refused the API key (HTTP {exc.code}); set "
                        f"{c.api_key_env} to a valid key or pass --api-key-env NAME."
                    ) from None
                if exc.code not in RETRYABLE_STATUS and exc.code < 500:
                    hint = (f" or pass --json-mode off if the server does not support response_format "
                            f"{c.json_mode!r}") if c.json_mode != "off" and exc.code == 400 else ""
                    raise UserError(
                        f"the judge at {self.url} answered HTTP {exc.code} for model {c.model!r} "
                        f"({detail[:200]}); check --judge and --base-url{hint}."
                    ) from None
                self._answered()  # the server is there, it is busy or failing
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                last_problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last_problem = "timed out"  # a slow server is still there: retried, not counted as gone
                else:
                    last_problem = self._scrub(f"{type(reason).__name__}: {reason}")
                    self._connection_failed(last_problem)
            except _BadCompletion as exc:
                self._answered()
                last_problem = f"not a chat completion ({exc})"
            if attempt < c.max_retries:
                wait = self._wait(attempt, retry_after)
                log.info(
                    "judge request failed (%s); retry %d/%d in %.1f s",
                    last_problem,
                    attempt + 1,
                    c.max_retries,
                    wait,
                )
                self._sleep(wait)
        raise JudgeRequestError(f"{self.url}: {last_problem} after {c.max_retries + 1} attempts")


class _BadCompletion(ValueError):
    pass


def _assistant_text(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _BadCompletion(payload[:100].decode("utf-8", "replace")) from None
    if not isinstance(content, str):
        raise _BadCompletion("message content is not text")
    return content
