"""Keeping a one-machine Ray cluster on 127.0.0.1.

Ray binds to the machine's network address by default. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
(Ray's switch for single-machine clusters, ``ray/_private/ray_constants.py``) makes the node
address 127.0.0.1, so the GCS, raylet, object manager and Serve's HTTP proxy listen there; it
must be set before ``ray`` is imported, and Ray's worker processes inherit it. One listener
ignores it: each Serve replica's inter-deployment gRPC server binds ``[::]:0`` (Ray 2.60,
``ray/serve/_private/replica.py``, ``_on_initialized``); ``keep_replica_on_loopback`` rebinds
it, from the replica's constructor, which runs first.

``listening_addresses`` lists what a set of processes listens on, for the tests that assert
every listener is on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

LOOPBACK = "127.0.0.1"

RAY_LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # one node, at 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report sent anywhere
}


def set_ray_loopback_env() -> None:
    """Set ``RAY_LOOPBACK_ENV`` in this process (before ``import ray``)."""
    os.environ.update(RAY_LOOPBACK_ENV)


def keep_replica_on_loopback() -> None:
    """Make this Serve replica's inter-deployment gRPC server bind 127.0.0.1, not every
    interface. Call it in the replica's constructor; a no-op where Ray has no such hook."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback", False):
        return

    def bind_loopback(server: object, address: str) -> int:
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return int(bind(server, address))

    bind_loopback.loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback  # type: ignore[attr-defined]


def listening_addresses(pids: Iterable[int]) -> set[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket the processes ``pids`` listen on."""
    import psutil

    found = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN and c.laddr:
                found.add((c.laddr.ip, c.laddr.port, pid))
    return found
