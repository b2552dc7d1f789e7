"""The one interface between the server and generation.

The API and the page never touch an engine: they build a ``Request`` with
``steering.requests.build_request`` and hand it to a ``Backend``, which answers with an
``EventStream``. ``steering.loop.EngineLoop`` (this project's engine on a thread) is the
backend today; another engine can serve the same API and page by implementing these five
methods and the stream.

Contract:
- ``submit(request)`` queues the request and returns at once; it raises ``Busy`` when the
  backend cannot take more work. It never raises for a bad request: requests are checked
  when built. ``request.visitor`` names who sent it ("" when anonymous): a backend shared by
  visitors should give each a fair turn (``EngineLoop`` admits waiting requests round-robin
  by visitor).
- The stream yields ``Event`` values in order, exactly one with a ``finish_reason`` per row,
  whatever happens (also when cancelled at any stage, or when the backend stops); it may also
  raise the exception that failed the request. Iterating it (plainly or with ``async for``)
  and stopping early, or calling ``cancel()`` (idempotent), frees the request's rows. ``async
  for`` must not hold a thread while it waits: a cancelled reader leaves nothing behind.
- ``run(job)`` calls ``job()`` (a function of no arguments that runs the model itself, e.g.
  ``steering.activations.feature_activations``) where no generation step can run alongside it
  and no steering hook is attached to the model (``EngineLoop``: on its engine thread, between
  two decode steps), and returns at once a ``concurrent.futures.Future`` of its result or of
  the exception it raised. It raises ``Busy`` when the backend cannot take more work; a job
  waiting when the backend stops fails with ``Busy``. A job cancelled before it starts never
  runs.
- ``health()`` returns a JSON-able dict with at least ``engine_alive`` (bool), ``running_rows``
  and ``waiting``, and may add ``stalled_seconds`` (how long the backend has made no progress
  while it had work; ``/healthz`` answers "down" beyond ``Limits.max_stall_seconds``);
  ``close()`` stops the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from ..requests import Event, Request

T = TypeVar("T")


class EventStream(Protocol):
    """The events of one submitted request."""

    request: Request

    def cancel(self) -> None: ...

    def __iter__(self) -> Iterator[Event]: ...

    def batches(self) -> Iterator[list[Event]]:
        """Every event that is ready, at least one, in order: a slow reader (a page that
        re-renders) takes what piled up in one go instead of falling behind."""
        ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def abatches(self) -> AsyncIterator[list[Event]]:
        """``batches`` with ``async for``, holding no thread while it waits."""
        ...


class Backend(Protocol):
    """Runs requests on one model (see the module docstring for the contract)."""

    def submit(self, request: Request) -> EventStream: ...

    def cancel(self, request_id: int) -> None: ...

    def run(self, job: Callable[[], T]) -> Future[T]: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
