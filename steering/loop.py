"""Many users, one model: a thread that runs the engine over every request in flight.

``EngineLoop.submit`` queues a request and returns a ``Handle`` to read its events from (a
plain or an async iterator). Requests that arrive while a batch is decoding join it at the next
step; a handle whose reader stops (closed iterator, cancelled task, ``cancel()``) frees its rows
at the next step. The waiting queue is bounded: beyond it ``submit`` raises ``Busy``. This is
the server's generation backend (``steering.serve.backend.Backend``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .engine import Engine
from .errors import Busy
from .requests import Event, Request


class Handle:
    """The events of one request, in order; the last event of each row has a finish_reason."""

    def __init__(self, loop: EngineLoop, request: Request) -> None:
        self.loop = loop
        self.request = request
        self.events: queue.Queue[Event | BaseException] = queue.Queue()
        self._open_rows = len(request.rows)

    def cancel(self) -> None:
        self.loop.cancel(self.request.id)

    def __iter__(self) -> Iterator[Event]:
        try:
            while self._open_rows:
                yield self._take(self.events.get())
        finally:
            if self._open_rows:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while self._open_rows:
                item = await asyncio.to_thread(self.events.get)
                yield self._take(item)
        finally:
            if self._open_rows:
                self.cancel()

    def _take(self, item: Event | BaseException) -> Event:
        if isinstance(item, BaseException):
            self._open_rows = 0
            raise item
        if item.finish_reason is not None:
            self._open_rows -= 1
        return item


class EngineLoop:
    """The engine on its own thread: requests queue here and join the batch between steps.

    ``max_waiting`` (default: the engine's ``limits.max_waiting``) bounds the queue.
    """

    def __init__(self, engine: Engine, *, max_waiting: int | None = None) -> None:
        self.engine = engine
        self.max_waiting = engine.limits.max_waiting if max_waiting is None else max_waiting
        self._waiting: list[Handle] = []
        self._handles: dict[int, Handle] = {}
        self._cancelled: set[int] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="steering-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Handle:
        """Queue ``request``; raises ``Busy`` when the queue is full or it can never fit."""
        if len(request.rows) > self.engine.max_batch:
            rows, limit = len(request.rows), self.engine.max_batch
            raise Busy(f"a request of {rows} rows exceeds the batch size {limit}")
        handle = Handle(self, request)
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting; try again shortly")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def cancel(self, request_id: int) -> None:
        with self._wake:
            self._cancelled.add(request_id)
            self._wake.notify()

    def health(self) -> dict[str, Any]:
        """What a health check reports: the engine thread alive, rows running, requests queued."""
        with self._wake:
            waiting = len(self._waiting)
        return {
            "engine_alive": self._thread.is_alive(),
            "running_rows": len(self.engine.live),
            "waiting": waiting,
            "max_waiting": self.max_waiting,
        }

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        """The engine thread: admit what fits, step, hand out events, until ``close``."""
        engine = self.engine
        while True:
            with self._wake:
                while not (self._waiting or engine.live or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
                room = engine.max_batch - len(engine.live)
                admitted = []
                while self._waiting and len(self._waiting[0].request.rows) <= room:
                    handle = self._waiting.pop(0)
                    room -= len(handle.request.rows)
                    admitted.append(handle)
                cancelled, self._cancelled = self._cancelled, set()
            for request_id in cancelled:
                engine.cancel(request_id)
            admitted = [h for h in admitted if h.request.id not in cancelled]
            self._handles.update((h.request.id, h) for h in admitted)
            try:
                events = engine.admit([h.request for h in admitted]) if admitted else []
                events += engine.step()
            except Exception as e:  # a failing batch fails its requests, never the server
                self._fail_all(e)
                continue
            self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            handle = self._handles.get(event.request_id)
            if handle is None:
                continue
            handle.events.put(event)
        live = {r.request.id for r in self.engine.live}
        for request_id in [i for i in self._handles if i not in live]:
            del self._handles[request_id]

    def _fail_all(self, error: Exception) -> None:
        for handle in self._handles.values():
            handle.events.put(error)
        for row in self.engine.live:
            row.request.cancelled = True
        self.engine.drop_finished()
        self._handles.clear()
