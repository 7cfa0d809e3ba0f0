"""The two pieces that keep CPU work off the event loop and the searched snapshot consistent.

`WorkQueue`: a fixed pool of threads with a bounded number of jobs waiting; a job beyond
that is refused at once (HTTP 503) instead of piling up requests, and their uploads, in memory.
`ReadWriteLock`: searches share the snapshot; moving it to a newer commit (which changes
the faiss index and the image table in place) waits for them and holds it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vladsearch.server.errors import ServiceError


class WorkQueue:
    """At most `workers` jobs running and `waiting` more queued; more raise ServiceError(503)."""

    def __init__(self, name: str, workers: int, waiting: int) -> None:
        if workers < 1 or waiting < 0:
            raise ValueError(f"{name}: need at least 1 worker and 0 waiting places, got {workers} and {waiting}")
        self.name, self.workers, self.waiting = name, workers, waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"vladsearch-{name}")
        self._slots = threading.BoundedSemaphore(workers + waiting)
        self._count_lock = threading.Lock()
        self.pending = 0  # running + waiting

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run function(*args) on the pool and await its result; 503 when the queue is full."""
        if not self._slots.acquire(blocking=False):
            raise ServiceError(503, f"server busy: {self.workers} {self.name} jobs running and {self.waiting} "
                                    "waiting; retry in a moment")
        with self._count_lock:
            self.pending += 1
        try:
            future = self._pool.submit(function, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        # A client that hangs up cancels this await, not the job: its slot frees when the job ends.
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._count_lock:
            self.pending -= 1
        self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers (so refreshes are never starved)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
