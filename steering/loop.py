"""Many users, one model: a thread that runs the engine over every request in flight.

``EngineLoop.submit`` queues a request and returns a ``Handle`` to read its events from (a
plain or an async iterator). Requests that arrive while a batch is decoding join it at the next
step; a handle whose reader stops (closed iterator, cancelled task, ``cancel()``) frees its rows
at the next step. The waiting queue is bounded: beyond it ``submit`` raises ``Busy``. This is
the server's generation backend (``steering.serve.backend.Backend``).

**Fair turns**: waiting requests are admitted round-robin by ``Request.visitor``, not first come
first served. Each visitor with requests waiting has a place in the turn order; when rows free,
the visitor at the front is admitted one request and, if it has more waiting, goes to the back.
So however many requests one visitor queues, another visitor's next request is admitted after
at most one admission per visitor ahead of it in the turn order (one admission round). An
anonymous request (``visitor == ""``) is a turn of its own.

**Jobs**: ``EngineLoop.run`` hands the engine thread a function to call between two steps
(an unsteered forward pass, such as ``steering.activations``): steering hooks are attached to
the model's modules only during a step, on this thread, so a job never sees another request's
steering, and no forward pass ever runs on the model from two threads at once. One job runs
between two steps, so a queue of jobs delays decoding by one job per step at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from .engine import Engine
from .errors import Busy
from .requests import Event, Request

log = logging.getLogger("steering.loop")

T = TypeVar("T")


class Canceller(Protocol):
    """Who ends a request early: an ``EngineLoop``, or another backend using ``Handle``."""

    def cancel(self, request_id: int) -> None: ...


class Handle:
    """The events of one request, in order: exactly one event with a ``finish_reason`` per row,
    whatever happens (finished, stopped, cancelled at any stage, failed).

    ``served_by`` names the model replica answering it, when the backend has several."""

    def __init__(self, loop: Canceller, request: Request) -> None:
        self.loop = loop
        self.request = request
        self.served_by: str | None = None
        self.events: queue.Queue[Event] = queue.Queue()
        self._open_rows = len(request.rows)  # the reader's count
        self._unfinished = set(range(len(request.rows)))  # the engine thread's count
        self._wake: Callable[[], None] | None = None  # an async reader's wake-up

    def cancel(self) -> None:
        """End the request at whatever stage it is (see ``EngineLoop.cancel``); no-op once
        every row has its final event."""
        if not self.finished:
            self.loop.cancel(self.request.id)

    def __iter__(self) -> Iterator[Event]:
        try:
            while self._open_rows:
                yield self._take(self.events.get())
        finally:
            if self._open_rows:
                self.cancel()

    def batches(self) -> Iterator[list[Event]]:
        """Blocks for one event, then adds every event already queued behind it."""
        try:
            while self._open_rows:
                yield self._with_ready(self._take(self.events.get()))
        finally:
            if self._open_rows:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Read on the event loop with no thread: the engine thread wakes this task, so a
        reader that is cancelled (its client gone) leaves nothing blocked behind."""
        ready = asyncio.Event()
        event_loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is reading
                event_loop.call_soon_threadsafe(ready.set)

        self._wake = wake
        try:
            while self._open_rows:
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    ready.clear()
                    if self.events.empty():  # checked after clear(): no wake-up is lost
                        await ready.wait()
                    continue
                yield self._take(item)
        finally:
            self._wake = None
            if self._open_rows:
                self.cancel()

    async def abatches(self) -> AsyncIterator[list[Event]]:
        """``batches`` on the event loop: every event that is ready, at least one, in order
        (what a replica streams to the entry: one message per batch, not per token)."""
        async for event in self:
            yield self._with_ready(event)

    def _with_ready(self, event: Event) -> list[Event]:
        """``event`` and every event already queued behind it."""
        batch = [event]
        while self._open_rows:
            try:
                batch.append(self._take(self.events.get_nowait()))
            except queue.Empty:
                break
        return batch

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
        wake = self._wake
        if wake is not None:
            wake()

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

    ``max_waiting`` (default: the engine's ``limits.max_waiting``) bounds the queue, across
    visitors, and one visitor may hold at most half of it; waiting requests are admitted in
    fair turns by visitor (see the module docstring). A failure in one request never fails
    another: requests that cannot be admitted or whose rows fail alone end with "error"; only a
    failure of the batch as a whole ends every request in it. Should the engine thread ever
    stop, every request ends ("error") and ``submit`` answers ``Busy``: no reader waits for
    events that cannot come.
    """

    def __init__(self, engine: Engine, *, max_waiting: int | None = None) -> None:
        self.engine = engine
        self.max_waiting = engine.limits.max_waiting if max_waiting is None else max_waiting
        self.max_waiting_per_visitor = max(1, self.max_waiting // 2)  # others always find room
        self._waiting: dict[str, deque[Handle]] = {}  # by visitor, in turn order
        self._waiting_count = 0
        self._handles: dict[int, Handle] = {}  # admitted, by request id
        self._cancelled: set[int] = set()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # see ``run``
        self._wake = threading.Condition()
        self._stopping = False
        self._progress = time.monotonic()  # the engine's last admission or step, or idle's end
        self._thread = threading.Thread(target=self._run, name="steering-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Handle:
        """Queue ``request`` behind its visitor's earlier ones; raises ``Busy`` when the queue
        is full, the request can never fit a batch, or the engine has stopped."""
        if len(request.rows) > self.engine.max_batch:
            rows, limit = len(request.rows), self.engine.max_batch
            raise Busy(f"a request of {rows} rows exceeds the batch size {limit}")
        handle = Handle(self, request)
        with self._wake:
            if self._stopping or not self._thread.is_alive():
                raise Busy("the server is shutting down")
            if self._waiting_count >= self.max_waiting:
                raise Busy(f"{self._waiting_count} requests are already waiting; try again shortly")
            turn = _turn(request)
            if len(self._waiting.get(turn, ())) >= self.max_waiting_per_visitor:
                raise Busy(
                    f"you have {self.max_waiting_per_visitor} requests waiting already, the most "
                    "one visitor may queue; try again when one has started"
                )
            if not self._busy():
                self._progress = time.monotonic()  # idle time is not a stall
            self._waiting.setdefault(turn, deque()).append(handle)
            self._waiting_count += 1
            self._wake.notify()
        return handle

    def run(self, job: Callable[[], T]) -> Future[T]:
        """Call ``job()`` on the engine thread between two decode steps (never during a
        forward pass of generation: no steering hook is attached to the model then) and return
        at once a ``Future`` of its result or exception. A job cancelled (``Future.cancel``)
        before it starts never runs.

        Raises ``Busy`` when ``max_waiting`` jobs are already waiting or the engine has
        stopped; a job still waiting when the loop closes fails with ``Busy``.
        """
        future: Future[T] = Future()
        with self._wake:
            if self._stopping or not self._thread.is_alive():
                raise Busy("the server is shutting down")
            if len(self._jobs) >= self.max_waiting:
                raise Busy(f"{len(self._jobs)} jobs are already waiting; try again shortly")
            if not self._busy():
                self._progress = time.monotonic()  # idle time is not a stall
            self._jobs.append((job, future))
            self._wake.notify()
        return future

    def cancel(self, request_id: int) -> None:
        """Cancel a request: one still waiting ends at once and never runs; a running one
        leaves the batch before the next forward pass."""
        with self._wake:
            for turn, handles in self._waiting.items():
                for handle in handles:
                    if handle.request.id == request_id:
                        handles.remove(handle)
                        if not handles:
                            del self._waiting[turn]
                        self._waiting_count -= 1
                        handle._end("cancelled")
                        return
            self._cancelled.add(request_id)
            self._wake.notify()

    def health(self) -> dict[str, Any]:
        """What a health check reports: the engine thread alive, rows running and free,
        requests and visitors waiting, and ``stalled_seconds``: how long the engine has made no
        progress (no admission, no step) while it had work (0 when idle)."""
        with self._wake:
            waiting, visitors, jobs = self._waiting_count, len(self._waiting), len(self._jobs)
            stalled = time.monotonic() - self._progress if self._busy() else 0.0
        running = len(self.engine.live)
        return {
            "engine_alive": self._thread.is_alive() and not self._stopping,
            "running_rows": running,
            "free_rows": max(0, self.engine.max_batch - running),
            "waiting": waiting,
            "jobs_waiting": jobs,
            "visitors_waiting": visitors,
            "max_waiting": self.max_waiting,
            "stalled_seconds": round(stalled, 3),
        }

    def close(self) -> None:
        """Stop the engine thread; every request still waiting or running ends "cancelled"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        self._end_all("cancelled")

    def _busy(self) -> bool:
        return bool(self._waiting or self.engine.live or self._handles or self._jobs)

    def _end_all(self, reason: str, error: BaseException | None = None) -> None:
        with self._wake:
            for handles in self._waiting.values():
                for handle in handles:
                    handle._end(reason, error)
            for handle in list(self._handles.values()):  # a copy: a stuck step may still run
                handle._end(reason, error)
            self._waiting.clear()
            self._waiting_count = 0
            jobs, self._jobs = self._jobs, deque()
        failure = Busy("the server is shutting down") if error is None else error
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(failure)

    def _run(self) -> None:
        """The engine thread: admit what fits, step, hand out events, until ``close``."""
        try:
            self._serve()
        except BaseException as e:  # a bug in the loop itself: end every request, then stop
            log.exception("the engine loop stopped")
            with self._wake:
                self._stopping = True
            self._end_all("error", e)

    def _serve(self) -> None:
        engine = self.engine
        while True:
            with self._wake:
                while not (self._waiting or engine.live or self._jobs or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
                job = self._jobs.popleft() if self._jobs else None
                admitted = self._take_waiting(engine.max_batch - len(engine.live))
            if job is not None:  # between two steps: no steering hook is attached now
                _run_job(*job)
                self._progress = time.monotonic()
            self._handles.update((h.request.id, h) for h in admitted)
            events = self._admit(admitted) if admitted else []
            self._progress = time.monotonic()
            with self._wake:  # cancels that landed until now, admission included
                cancelled, self._cancelled = self._cancelled, set()
            for request_id in cancelled:
                engine.cancel(request_id)  # the rows leave before the next forward pass
            try:
                events += engine.step()
            except Exception as e:  # the batch as a whole failed: its requests, not the server
                self._fail_all(e)
                continue
            finally:
                self._progress = time.monotonic()
            self._dispatch(events)

    def _take_waiting(self, room: int) -> list[Handle]:
        """Requests to admit into ``room`` rows, one per visitor in turn order; a visitor with
        more waiting goes to the back. Stops at the first that does not fit, so a compare is
        never passed over for ever by single rows."""
        admitted = []
        while self._waiting:
            turn, handles = next(iter(self._waiting.items()))
            if len(handles[0].request.rows) > room:
                break
            handle = handles.popleft()
            del self._waiting[turn]
            if handles:
                self._waiting[turn] = handles  # the back of the turn order
            self._waiting_count -= 1
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
            if handle is None:
                continue
            if event.finish_reason is not None and handle._unfinished == {event.row}:
                del self._handles[event.request_id]  # gone before its reader sees the end
            handle._put(event)

    def _fail_all(self, error: Exception) -> None:
        for handle in self._handles.values():
            handle._end("error", error)
        for row in self.engine.live:
            row.request.cancelled = True
        self.engine.drop_finished()
        self._handles.clear()


def _run_job(job: Callable[[], T], future: Future[T]) -> None:
    """``job``'s result or exception into ``future``; nothing when it was cancelled first."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = job()
    except BaseException as error:  # the job's caller gets it; the loop goes on
        future.set_exception(error)
        if not isinstance(error, Exception):
            raise
    else:
        future.set_result(result)


def _turn(request: Request) -> str:
    """Whose turn a request waits in: its visitor's, or its own when anonymous."""
    return f"visitor:{request.visitor}" if request.visitor else f"request:{request.id}"
