"""Fewer requests in flight after a timeout: `ConcurrencyGate`, used by `eval/http.py`'s `JSONEndpoint`.

A server with one slot (llama.cpp's, llama-cpp-python's) queues concurrent requests: with 4 in flight the
last waits for three answers, times out, is retried, and the server still generates every abandoned
answer, so the queue never drains (seen: 13 minutes, no verdict). Halving the requests in
flight on each timeout, down to one, lets such a server answer in turn.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Ticket:
    epoch: int  # how many times the limit had been lowered when the request started
    alone: bool  # the limit was one: nothing else was in flight


class ConcurrencyGate:
    """How many requests are on the wire at once: as many as the caller's threads send until one times out,
    then half of those in flight, halved again on each later timeout, down to one. Requests that started
    before a change do not change it again: four queued requests timing out together mean "fewer", not
    "four times fewer". It never climbs back during a run (a rerun starts at --concurrency again): a server
    that queued once will queue again, and each timeout costs a full timeout and an abandoned answer."""

    def __init__(self):
        self._changed = threading.Condition()
        self.limit: int | None = None  # None: no limit beyond the caller's threads
        self.in_flight = 0
        self._epoch = 0

    def enter(self, cancelled: threading.Event) -> Ticket | None:
        """Wait for a slot; None when `cancelled` is set meanwhile. Every ticket is given back by `leave()`."""
        with self._changed:
            while self.limit is not None and self.in_flight >= self.limit:
                if cancelled.is_set():
                    return None
                self._changed.wait(0.5)  # `wake_all` ends it at once; the timeout is a safety net
            self.in_flight += 1
            return Ticket(self._epoch, self.limit == 1)

    def leave(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify()

    def timed_out(self, ticket: Ticket) -> Tuple[int, int] | None:
        """A request holding `ticket` (before `leave()`) timed out: (before, after) when the limit changed."""
        with self._changed:
            if ticket.epoch != self._epoch:
                return None
            before = self.limit if self.limit is not None else self.in_flight
            after = max(1, before // 2)
            if after == self.limit:
                return None
            self.limit, self._epoch = after, self._epoch + 1
            return before, after

    def wake_all(self) -> None:
        """Let every waiting `enter` look at its `cancelled` event now."""
        with self._changed:
            self._changed.notify_all()
