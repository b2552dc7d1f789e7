"""A bounded number of worker threads for the API's CPU work.

Parsing a body, validating a steering, resolving presets and tokenizing a chat never run on
the event loop (they would stall every other request meanwhile): they run here, at most
``limits.max_request_threads`` at once; further requests wait their turn without a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Workers:
    """Runs functions in at most ``threads`` worker threads at once."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread; its exception is raised here."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    def health(self) -> dict[str, int]:
        """Worker threads free, and requests waiting for one."""
        if self._limiter is None:
            return {"request_threads_free": self.threads, "request_threads_waiting": 0}
        stats = self._limiter.statistics()
        free = self.threads - stats.borrowed_tokens
        return {"request_threads_free": free, "request_threads_waiting": stats.tasks_waiting}
