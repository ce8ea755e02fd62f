"""An OpenAI-compatible chat-completions client (standard library only).

Works with OpenAI and with servers that speak its wire format (vLLM, llama.cpp, TGI) through
`base_url`. Transient failures - HTTP 429, any 5xx, timeouts, dropped connections, a 200 whose
body is not a chat completion - are retried with exponential backoff (honouring `Retry-After`);
mistakes a retry cannot fix (bad key, unknown model) stop the run with a `UserError`.

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


class ChatCompletionsClient:
    """`complete(messages) -> str`: the assistant's text for one chat-completions request."""

    def __init__(self, config: HTTPJudgeConfig, sleep=None):
        self.config = config
        self._api_key = os.environ.get(config.api_key_env, "")
        self._cancelled = threading.Event()
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
        return f"openai:{c.model}|temperature={c.temperature}|max_tokens={c.max_tokens}"

    def cancel(self) -> None:
        """Stop retrying: requests already on the wire finish, nothing new is sent."""
        self._cancelled.set()

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
        body = json.dumps(
            {"model": c.model, "messages": messages, "temperature": c.temperature, "max_tokens": c.max_tokens}
        ).encode("utf-8")
        last_problem = ""
        for attempt in range(c.max_retries + 1):
            if self._cancelled.is_set():
                raise JudgeRequestError(f"{self.url}: cancelled ({last_problem or 'run stopped'})")
            retry_after = None
            try:
                with urllib.request.urlopen(self._request(), data=body, timeout=c.timeout_s) as response:
                    payload = response.read()
                return _assistant_text(payload)
            except urllib.error.HTTPError as exc:
                detail = self._scrub(exc.read(300).decode("utf-8", "replace").strip())
                if exc.code in (401, 403):
                    raise UserError(
                        f"the judge at {self.url} refused the API key (HTTP {exc.code}); set "
                        f"{c.api_key_env} to a valid key or pass --api-key-env NAME."
                    ) from None
                if exc.code not in RETRYABLE_STATUS and exc.code < 500:
                    raise UserError(
                        f"the judge at {self.url} answered HTTP {exc.code} for model {c.model!r} "
                        f"({detail[:200]}); check --judge and --base-url."
                    ) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                last_problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_problem = (
                    "timed out"
                    if isinstance(reason, (socket.timeout, TimeoutError))
                    else self._scrub(f"{type(reason).__name__}: {reason}")
                )
            except _BadCompletion as exc:
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
