"""One model replica: the model, its SAEs and presets, and its own engine (this project's,
or vLLM), as the body of a Ray Serve deployment.

Each replica loads what ``steering serve`` would (``steering.serve.app.load_service``) from
the same ``ServeConfig`` as the entry, so SAE names match on both sides
(``steering.ray_serve.wire``). It queues requests in its own ``EngineLoop`` (fair turns by
visitor, bounded waiting queue), so a replica that is full answers ``Busy`` as one process
does. Ray places it: ``num_gpus`` per replica sets its ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from ..serve.app import ServeConfig, load_service
from . import wire
from .loopback import keep_replica_on_loopback

log = logging.getLogger("steering.ray_serve")


class ModelReplica:
    """A Ray Serve deployment body (see ``steering.ray_serve.app``). ``config`` is what to
    load; ``loopback`` keeps the replica's own listener on 127.0.0.1."""

    stream_interval_s = 0.02  # a reply's events travel to the entry at most this often

    def __init__(self, config: ServeConfig, loopback: bool = True, cpus: int = 0) -> None:
        from ray import serve

        if loopback:
            keep_replica_on_loopback()
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id
        self.cores = pin_cores(context.rank.local_rank, cpus) if cpus else []
        self.service = load_service(config)
        log.info("replica %s: %s ready", self.name, self.service.model_id)

    async def generate(self, payload: bytes) -> AsyncIterator[Any]:
        """First this replica's name once the request is queued (or the ``Busy`` that
        refused it), then the request's events as its engine makes them, in lists: the first
        at once, then what gathered over ``stream_interval_s`` (each message through Ray costs
        about a millisecond of CPU on both sides: one per token would cost more than a small
        model's decode step). Cancelled (the entry stopped reading), the request leaves the batch
        before the next step."""
        service = self.service
        request = wire.loads(payload, service.model, service.resolver.loaded)
        stream = service.backend.submit(request)
        try:
            yield self.name
            pending: list[Any] = []
            sent = 0.0  # the first events go at once: time to first token is not delayed
            async for events in stream.abatches():
                pending += events
                if time.monotonic() - sent >= self.stream_interval_s:
                    yield pending
                    pending, sent = [], time.monotonic()
            if pending:
                yield pending
        finally:
            stream.cancel()

    async def run(self, payload: bytes) -> Any:
        """A job of the entry (``Backend.run``) on this replica's engine thread."""
        service = self.service
        job = wire.loads(payload, service.model, service.resolver.loaded)
        return await asyncio.wrap_future(service.backend.run(job))

    def health(self) -> dict[str, Any]:
        return {"replica": self.name, "cores": self.cores, **self.service.health()}

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose engine stopped is restarted."""
        if not self.service.health()["engine_alive"]:
            raise RuntimeError(f"replica {self.name}: the engine has stopped")

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def pin_cores(local_rank: int, cpus: int) -> list[int]:
    """Pin this replica to its own ``cpus`` cores of this machine: replica ``local_rank``
    takes cores ``[local_rank * cpus, (local_rank + 1) * cpus)`` of those this process may
    use, for torch's threads (this project's engine) and for vLLM's CPU build
    (``VLLM_CPU_OMP_THREADS_BIND``, read when its worker starts; no core held back). Ray
    reserves CPUs by count, not by core, so without this two replicas' OpenMP threads would
    share cores. Returns the cores, or [] (nothing pinned) when they do not exist."""
    import torch

    available = sorted(os.sched_getaffinity(0))
    mine = available[local_rank * cpus : (local_rank + 1) * cpus]
    if len(mine) < cpus:
        log.warning(
            "replica %d: %d cores asked, %d available; not pinned", local_rank, cpus, len(available)
        )
        return []
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(cpus)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return mine
