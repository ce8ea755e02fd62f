"""Blocking calls (HTTP requests to a judge or a server) on a few daemon threads, so Ctrl-C ends the command
within a moment.

concurrent.futures' ThreadPoolExecutor joins its workers when the interpreter exits, so a worker waiting
for a slow server held the process open after Ctrl-C until its request timed out (119.5 s with the judge's
120 s timeout). These threads are daemons: the process exits with their requests still
open. Whatever the work has already handed back stays: the judge caches each verdict as it arrives.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_on_daemon_threads(items: Iterable[T], work: Callable[[T], R], workers: int,
                          on_result: Callable[[T, R], None], name: str = "worker", poll_s: float = 0.25) -> None:
    """`work(item)` for every item on `workers` daemon threads; `on_result(item, result)` runs on the calling
    thread as each one finishes. The first exception `work` raises (a UserError: a refused key, a refused
    request) is raised here, and so is Ctrl-C; the items not started yet are then dropped and the threads
    still busy are left behind, not joined. To stop their retries too, cancel what they call."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    count = 0
    for item in items:
        todo.put(item)
        count += 1
    finished: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((item, work(item), None))
            except BaseException as exc:  # handed to the calling thread, which raises it
                finished.put((item, None, exc))
                return

    for number in range(min(workers, count)):
        threading.Thread(target=worker, name=f"{name}-{number}", daemon=True).start()
    try:
        for _ in range(count):
            while True:
                try:  # a timed wait: Ctrl-C interrupts it on every platform
                    item, result, error = finished.get(timeout=poll_s)
                    break
                except queue.Empty:
                    continue
            if error is not None:
                raise error
            on_result(item, result)
    finally:
        stop.set()
