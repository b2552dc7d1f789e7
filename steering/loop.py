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
    """The events of one request, in order: exactly one event with a ``finish_reason`` per row,
    whatever happens (finished, stopped, cancelled at any stage, failed)."""

    def __init__(self, loop: EngineLoop, request: Request) -> None:
        self.loop = loop
        self.request = request
        self.events: queue.Queue[Event] = queue.Queue()
        self._open_rows = len(request.rows)  # the reader's count
        self._unfinished = set(range(len(request.rows)))  # the engine thread's count

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

    def _take(self, event: Event) -> Event:
        if event.finish_reason is not None:
            self._open_rows -= 1
        return event

    def _put(self, event: Event) -> None:
        """Hand ``event`` to the reader (engine thread, or under the loop's lock)."""
        if event.finish_reason is not None:
            if event.row not in self._unfinished:
                return  # a row ends once
            self._unfinished.discard(event.row)
        self.events.put(event)

    def _end(self, reason: str, error: BaseException | None = None) -> None:
        """Final events for every row that has none yet."""
        for row in sorted(self._unfinished):
            prompt = len(self.request.rows[row].prompt_ids)
            self._put(Event(self.request.id, row, "", None, reason, prompt, 0, error))

    @property
    def finished(self) -> bool:
        return not self._unfinished


class EngineLoop:
    """The engine on its own thread: requests queue here and join the batch between steps.

    ``max_waiting`` (default: the engine's ``limits.max_waiting``) bounds the queue. A failure
    in one request never fails another: requests that cannot be admitted or whose rows fail
    alone end with "error"; only a failure of the batch as a whole ends every request in it.
    """

    def __init__(self, engine: Engine, *, max_waiting: int | None = None) -> None:
        self.engine = engine
        self.max_waiting = engine.limits.max_waiting if max_waiting is None else max_waiting
        self._waiting: list[Handle] = []
        self._handles: dict[int, Handle] = {}  # admitted, by request id
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
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting; try again shortly")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def cancel(self, request_id: int) -> None:
        """Cancel a request: one still waiting ends at once and never runs; a running one
        leaves the batch before the next forward pass."""
        with self._wake:
            for i, handle in enumerate(self._waiting):
                if handle.request.id == request_id:
                    del self._waiting[i]
                    handle._end("cancelled")
                    return
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
        """Stop the engine thread; every request still waiting or running ends "cancelled"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        with self._wake:
            for handle in [*self._waiting, *self._handles.values()]:
                handle._end("cancelled")
            self._waiting.clear()

    def _run(self) -> None:
        """The engine thread: admit what fits, step, hand out events, until ``close``."""
        engine = self.engine
        while True:
            with self._wake:
                while not (self._waiting or engine.live or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._take_waiting(engine.max_batch - len(engine.live))
            self._handles.update((h.request.id, h) for h in admitted)
            events = self._admit(admitted) if admitted else []
            with self._wake:  # cancels that landed until now, admission included
                cancelled, self._cancelled = self._cancelled, set()
            for request_id in cancelled:
                engine.cancel(request_id)  # the rows leave before the next forward pass
            try:
                events += engine.step()
            except Exception as e:  # the batch as a whole failed: its requests, not the server
                self._fail_all(e)
                continue
            self._dispatch(events)

    def _take_waiting(self, room: int) -> list[Handle]:
        admitted = []
        while self._waiting and len(self._waiting[0].request.rows) <= room:
            handle = self._waiting.pop(0)
            room -= len(handle.request.rows)
            admitted.append(handle)
        return admitted

    def _admit(self, handles: list[Handle]) -> list[Event]:
        """Admit together; when that fails, one by one, so only the failing requests fail."""
        try:
            return self.engine.admit([h.request for h in handles])
        except Exception as error:
            if len(handles) == 1:
                return self._failed(handles[0], error)
        events: list[Event] = []
        for handle in handles:
            try:
                events += self.engine.admit([handle.request])
            except Exception as error:
                events += self._failed(handle, error)
        return events

    @staticmethod
    def _failed(handle: Handle, error: Exception) -> list[Event]:
        """The final "error" events of a request that could not be admitted."""
        rows = handle.request.rows
        return [
            Event(handle.request.id, i, "", None, "error", len(row.prompt_ids), 0, error)
            for i, row in enumerate(rows)
        ]

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            handle = self._handles.get(event.request_id)
            if handle is not None:
                handle._put(event)
        for request_id in [i for i, h in self._handles.items() if h.finished]:
            del self._handles[request_id]

    def _fail_all(self, error: Exception) -> None:
        for handle in self._handles.values():
            handle._end("error", error)
        for row in self.engine.live:
            row.request.cancelled = True
        self.engine.drop_finished()
        self._handles.clear()
