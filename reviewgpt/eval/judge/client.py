"""An OpenAI-compatible chat-completions client (standard library only).

Works with OpenAI and with servers that speak its wire format (vLLM, llama.cpp, TGI) through
`base_url`. What is not about chat completions - retries with backoff, the server's error text,
refusals that stop the run at once, fewer requests in flight after a timeout, giving up on a server
that is gone or too slow, Ctrl-C, the API key - is `reviewgpt.eval.http.JSONEndpoint`'s; this module
builds the request, reads the assistant's text and says which flags to change when the server refuses.

`json_mode` asks the server for JSON output (`response_format`): `object` is OpenAI's JSON mode,
`schema` a JSON Schema of the verdict (`json_schema`, which constrains small judges that otherwise
answer in prose).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List

from reviewgpt.eval.http import BadAnswer, JSONEndpoint, RetryPolicy

log = logging.getLogger(__name__)

JSON_MODES = ("off", "object", "schema")
# A prompt and answer longer than the model's context (OpenAI's, vLLM's and llama.cpp's words for it).
CONTEXT_TOO_SMALL = re.compile(r"context length|context window|exceeds? the context|n_ctx", re.IGNORECASE)


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
    max_timeouts_alone: int = field(
        default=3, metadata={"help": "timeouts in a row with one request in flight after which the judge counts "
                             "as too slow for timeout_s"}
    )

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be a non-empty model name")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, not {self.max_tokens!r}")
        if self.json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {JSON_MODES}, not {self.json_mode!r}")
        self.retry_policy()  # checks the retry settings

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
                           max_backoff_s=self.max_backoff_s, max_connection_failures=self.max_connection_failures,
                           max_timeouts_alone=self.max_timeouts_alone)

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
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.endpoint = JSONEndpoint(self.url, config.retry_policy(), config.api_key_env, name="the judge",
                                     refusal_advice=self._refusal_advice, sleep=sleep)

    def __repr__(self) -> str:  # never show the key
        return f"ChatCompletionsClient(model={self.config.model!r}, url={self.url!r})"

    @property
    def identity(self) -> str:
        """What decides the answers (cache key part): not the URL or key, which only transport it."""
        c = self.config
        json_mode = f"|json={c.json_mode}" if c.json_mode != "off" else ""  # "off" keeps earlier caches valid
        return f"openai:{c.model}|temperature={c.temperature}|max_tokens={c.max_tokens}{json_mode}"

    @property
    def gave_up(self) -> str | None:
        """Why the client stopped asking (the judge is gone or too slow), or None."""
        return self.endpoint.gave_up

    @property
    def stopped(self) -> bool:
        """Cancelled (Ctrl-C, a fatal error) or given up: no request is sent any more."""
        return self.endpoint.stopped

    @property
    def concurrency_limit(self) -> int | None:
        """Requests in flight the client came down to after timeouts; None while it never had to."""
        return self.endpoint.gate.limit

    def cancel(self) -> None:
        """Stop retrying: requests already on the wire are left, nothing new is sent."""
        self.endpoint.cancel()

    def complete(self, messages: List[Dict[str, str]]) -> str:
        c = self.config
        request = {"model": c.model, "messages": messages, "temperature": c.temperature, "max_tokens": c.max_tokens}
        if c.response_format():
            request["response_format"] = c.response_format()
        return self.endpoint.post(request, _assistant_text)

    def _refusal_advice(self, status: int, text: str) -> str:
        if CONTEXT_TOO_SMALL.search(text):
            return ("pass a smaller --paper-chars or --max-tokens, or start the server with a larger context "
                    "(llama.cpp: --n_ctx / -c)")
        check = f"check the model name {self.config.model!r} (--judge) and --base-url"
        mode = self.config.json_mode
        if mode == "off" or status == 404:
            return check
        other = " (or --json-mode object, which more servers support)" if mode == "schema" else ""
        return f"pass --json-mode off if the server does not support response_format {mode!r}{other}, else {check}"


def _assistant_text(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadAnswer(payload[:100].decode("utf-8", "replace")) from None
    if not isinstance(content, str):
        raise BadAnswer("message content is not text")
    return content
