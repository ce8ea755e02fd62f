"""The on-disk verdict cache: one JSON line per judgment, appended the moment it arrives.

Paid judgments must never be asked twice. Each line is written in one write (`files.append_line`)
and fsync'ed by the worker that got the answer, so a crash, a kill or Ctrl-C loses at most the
requests in flight; a rerun reads the file and asks only the keys it lacks. A torn last line
(killed mid-write) is skipped. Later lines win, so re-asking an unparsable judgment (`--retry-unparsable`) just
appends.

The key is a hash of everything that determines the answer: the judge's identity (backend, model,
sampling), the judge prompt's version and the exact messages (paper excerpt and both reviews in
their order). Change any of them and the old verdict is not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterable

log = logging.getLogger(__name__)

CACHE_FILE = "verdicts.cache.jsonl"


def cache_key(judge_identity: str, prompt_version: str, messages: Iterable[dict]) -> str:
    payload = json.dumps([judge_identity, prompt_version, list(messages)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Append-only JSONL of judgment entries, keyed by `entry["key"]`; safe across threads."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        self._entries: Dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                # A line cut short by a kill mid-write; its judgment is simply asked again.
                log.warning(
                    "%s:%d: skipping an unreadable cache line (an interrupted write?)", self.path, number
                )
        log.info("verdict cache %s: %d judgments", self.path, len(self._entries))

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def close(self) -> None:
        """Take no more entries, once a write in progress has finished: on Ctrl-C the process exits with
        worker threads still running, and none of them may be cut off halfway through a line."""
        with self._lock:
            self._closed = True

    def put(self, entry: dict) -> None:
        from reviewgpt.files import append_line

        line = json.dumps(entry, ensure_ascii=False)
        with self._lock:
            if self._closed:
                log.debug("verdict cache closed: not keeping a judgment that arrived after the stop")
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A previous run killed mid-write may have left a line without its newline: start a fresh one.
            needs_newline = (
                self.path.exists() and self.path.stat().st_size > 0 and not self._ends_with_newline()
            )
            # One write per line, rolled back on a short write (a full disk): a line is whole or absent.
            append_line(self.path, ("\n" if needs_newline else "") + line)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)  # paid for: on the disk before the next request
            finally:
                os.close(fd)
            self._entries[entry["key"]] = entry

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
