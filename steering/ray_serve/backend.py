"""The entry's backend: every request goes to one of the model replicas of a Ray Serve
deployment (``steering.ray_serve.replica.ModelReplica``), which Ray picks (the replica with
fewer requests in flight of two drawn at random).

``RayBackend`` implements ``steering.serve.backend.Backend``, so the page and the API run
unchanged in the entry. A request travels as bytes (``steering.ray_serve.wire``) and comes
back as the replica's own events, streamed. ``submit`` waits until a replica has queued the
request (one Ray round trip) so that a full replica answers ``Busy`` there, as the
single-process server does; the events then arrive on a thread of this backend's own, and a
reader that stops cancels the request on its replica. Jobs (``run``, e.g. activations) run on
a replica too: the entry's model has no weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from ..errors import Busy, SteeringError
from ..loop import Handle
from ..models import SteerableModel
from ..requests import Request
from ..sae import SAE
from . import wire

log = logging.getLogger("steering.ray_serve")

T = TypeVar("T")

STATUS_EVERY_S = 2.0  # how often the entry reads the replicas' states for /healthz


class RayBackend:
    """Requests and jobs on the replicas behind ``handle`` (a Ray Serve ``DeploymentHandle``
    of ``ModelReplica``). ``model`` and ``loaded`` (``SAEResolver.loaded``) are the entry's
    copies that references in requests and jobs stand for. ``wait_s`` bounds how long
    ``submit`` and ``run`` wait for a replica to take the work (then ``Busy``). ``app_name``
    is the Serve application whose replicas ``health`` counts (None: not counted)."""

    def __init__(
        self,
        handle: Any,
        model: SteerableModel,
        loaded: Mapping[str, SAE],
        *,
        wait_s: float = 30.0,
        app_name: str | None = None,
        deployment: str = "ModelReplica",
    ) -> None:
        self._stream = handle.options(stream=True)
        self._unary = handle
        self.model, self.loaded, self.wait_s = model, loaded, wait_s
        self._app, self._deployment = app_name, deployment
        self._tasks: dict[int, asyncio.Task[None]] = {}  # request id -> its pump
        self._rows = 0  # rows of the requests in flight
        self._replicas: dict[str, int] = {}  # replica state -> count, from Ray Serve's status
        self._status_at = 0.0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-events")
        self._thread.daemon = True
        self._thread.start()
        if app_name is not None:
            asyncio.run_coroutine_threadsafe(self._refresh_status(), self._loop)

    # ---- Backend ----

    def submit(self, request: Request) -> Handle:
        """Hand ``request`` to a replica; raises ``Busy`` when it cannot take it (its queue
        is full, Ray Serve's queue for the deployment is full, no replica answered within
        ``wait_s``, or this backend is closed)."""
        if self._closed:
            raise Busy("the server is shutting down")
        payload = wire.dumps(request, self.model, self.loaded)
        handle = Handle(self, request)
        started = asyncio.run_coroutine_threadsafe(self._start(handle, payload), self._loop)
        try:
            handle.served_by = started.result(timeout=self.wait_s)
        except FutureTimeout:
            started.cancel()
            raise Busy(f"no model replica took the request within {self.wait_s:g} s") from None
        return handle

    def cancel(self, request_id: int) -> None:
        """End a request: its replica drops it before its next step."""
        task = self._tasks.get(request_id)
        if task is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def run(self, job: Callable[[], T]) -> Future[T]:
        """``job()`` on a replica, between two of its decode steps; a ``Future`` of its
        result. ``job`` may hold the entry's model and SAEs: the replica's own stand in."""
        if self._closed:
            raise Busy("the server is shutting down")
        payload = wire.dumps(job, self.model, self.loaded)
        return asyncio.run_coroutine_threadsafe(self._run(payload), self._loop)

    def health(self) -> dict[str, Any]:
        """The entry's view: replicas by state (from Ray Serve, refreshed every few seconds),
        requests and rows in flight here; ``engine_alive`` while a replica is running."""
        stale = time.monotonic() - self._status_at > STATUS_EVERY_S
        if stale and self._app is not None and not self._closed:
            self._status_at = time.monotonic()
            asyncio.run_coroutine_threadsafe(self._refresh_status(), self._loop)
        running = self._replicas.get("RUNNING", 0)
        return {
            "backend": "ray",
            "engine_alive": not self._closed and (running > 0 or not self._replicas),
            "replicas": dict(self._replicas),
            "requests_in_flight": len(self._tasks),
            "running_rows": self._rows,
            "waiting": 0,  # each replica queues its own; see its log
        }

    def close(self) -> None:
        """Cancel every request in flight (their rows end "cancelled") and stop the thread."""
        if self._closed:
            return
        self._closed = True
        for request_id in list(self._tasks):
            self.cancel(request_id)
        deadline = time.monotonic() + 5
        while self._tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ---- on this backend's event loop ----

    async def _start(self, handle: Handle, payload: bytes) -> str:
        """Send the request; return the replica's name once it has queued it."""
        events = self._stream.generate.remote(payload)
        try:
            replica = await events.__anext__()
        except BaseException as e:
            with contextlib.suppress(BaseException):  # it may raise the same error again
                events.cancel()
            raise _unwrap(e) from None
        request = handle.request
        self._rows += len(request.rows)
        self._tasks[request.id] = asyncio.create_task(self._pump(handle, events))
        return str(replica)

    async def _pump(self, handle: Handle, events: Any) -> None:
        request = handle.request
        try:
            async for batch in events:
                for event in batch:
                    handle._put(event)
            handle._end("error", SteeringError("the model replica ended the reply early"))
        except asyncio.CancelledError:
            events.cancel()
            handle._end("cancelled")
        except BaseException as e:  # the replica died, or Ray failed: this request alone
            log.warning("request %d failed on its replica: %s", request.id, e)
            handle._end("error", _unwrap(e))
        finally:
            self._tasks.pop(request.id, None)
            self._rows -= len(request.rows)

    async def _run(self, payload: bytes) -> Any:
        try:
            return await self._unary.run.remote(payload)
        except BaseException as e:
            raise _unwrap(e) from None

    async def _refresh_status(self) -> None:
        try:
            from ray import serve

            status = await asyncio.to_thread(serve.status)
            deployment = status.applications[self._app].deployments[self._deployment]
            self._replicas = {str(k): int(v) for k, v in deployment.replica_states.items()}
        except Exception as e:  # health must answer even when Ray does not
            log.warning("could not read the replicas' status: %s", e)


def _unwrap(error: BaseException) -> BaseException:
    """The replica's own exception out of Ray's wrapper (``RayTaskError.cause``), so that
    ``Busy`` and request errors read as in one process; Ray Serve's back-pressure is
    ``Busy``."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    if type(error).__name__ == "BackPressureError":
        return Busy("every model replica is full; try again shortly")
    return error
