"""The server on Ray Serve: one entry that serves the page and the API, N model replicas.

``build_app(config, options)`` is a Ray Serve application of two deployments:

- ``ModelReplica`` (``steering.ray_serve.replica``), ``options.replicas`` copies (or
  autoscaled between ``replicas`` and ``max_replicas`` on ``target_ongoing_requests``), each
  with its own engine and ``cpus_per_replica`` / ``gpus_per_replica`` reserved;
- ``Entry``, one copy, the HTTP ingress: the same FastAPI app and Gradio page as
  ``steering serve`` (``steering.serve.app.create_app``), with a model that has no weights and
  ``RayBackend`` sending each request to a replica. The page's sessions, the per-visitor rate
  limits and the requests-in-flight bound live here, so they hold across replicas.

Requests are stateless per turn (the chat history travels with each), so any replica answers
any turn; ``X-Steering-Replica`` names the one that did. ``serve_on_ray`` starts a local
cluster on 127.0.0.1 (or joins ``options.address``), runs the application, prints its URL and
shuts everything down on Ctrl-C or SIGTERM. ``app_builder`` is the same application for Ray's
own ``serve run`` / ``serve deploy``.

Release line: Ray 2.60 (``ray[serve]==2.60.*``, the ``ray`` extra).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SteeringError
from ..serve.app import ServeConfig
from .loopback import set_ray_loopback_env
from .processes import Descendants

log = logging.getLogger("steering.ray_serve")

APP_NAME = "steering"
# HTTP requests the entry holds at once (each open page keeps one event stream); the API's
# own per-visitor limits and the replicas' queues bound the work behind them.
ENTRY_MAX_ONGOING = 1000


@dataclass(frozen=True)
class RayOptions:
    """How many model replicas, and what each reserves.

    ``replicas`` copies run from the start; with ``max_replicas`` above it, Ray Serve adds
    replicas while the requests in flight per replica exceed ``target_ongoing_requests`` and
    removes them down to ``replicas`` when idle. ``cpus_per_replica`` / ``gpus_per_replica``
    are Ray resources (a replica with ``gpus_per_replica=1`` sees one GPU as ``cuda``).
    ``address`` joins a running Ray cluster ("auto", or "ray://host:10001"); None starts one
    on this machine, every listener on 127.0.0.1 (``num_cpus`` / ``num_gpus``: what it may
    use; None: all)."""

    replicas: int = 2
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    extra_actor_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> RayOptions:
        """Return self, or raise ``SteeringError`` naming the bad option and what is valid."""
        if not 1 <= self.replicas <= 1024:
            raise SteeringError(
                f"--replicas {self.replicas}: use 1..1024 (leave it out for one process)"
            )
        if self.max_replicas is not None and not self.replicas <= self.max_replicas <= 1024:
            raise SteeringError(
                f"--max-replicas {self.max_replicas}: use {self.replicas}..1024 (at least "
                "--replicas)"
            )
        if not (math.isfinite(self.target_ongoing_requests) and self.target_ongoing_requests > 0):
            raise SteeringError(
                f"--target-ongoing-requests {self.target_ongoing_requests}: use a number > 0"
            )
        for flag, value in (
            ("--cpus-per-replica", self.cpus_per_replica),
            ("--gpus-per-replica", self.gpus_per_replica),
        ):
            # Ray counts resources in steps of 0.0001
            if not (math.isfinite(value) and 0 <= value <= 1024) or round(value, 4) != value:
                raise SteeringError(
                    f"{flag} {value}: use a number from 0 to 1024 with at most 4 decimals"
                )
        return self

    @property
    def local(self) -> bool:
        return self.address is None


def require_ray() -> None:
    """Raise ``SteeringError`` saying how to install Ray Serve when it is missing (without
    importing Ray: it reads its environment once, at import)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SteeringError(
            "replicas need Ray Serve, which is not installed: run `make install-ray`, or "
            "pip install 'steering[ray]'"
        )


def replica_deployment_options(config: ServeConfig, options: RayOptions) -> dict[str, Any]:
    """``ModelReplica``'s Ray Serve options: resources, replica count or autoscaling, and
    queues sized by the server's limits (each replica's own queue answers ``Busy``)."""
    limits = config.limits
    scaling: dict[str, Any]
    if options.max_replicas is not None and options.max_replicas > options.replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.replicas,
                "initial_replicas": options.replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
    else:
        scaling = {"num_replicas": options.replicas}
    actor = {"num_cpus": options.cpus_per_replica, **options.extra_actor_options}
    if options.gpus_per_replica:
        actor["num_gpus"] = options.gpus_per_replica
    return {
        **scaling,
        "ray_actor_options": actor,
        "max_ongoing_requests": limits.max_batch + limits.max_waiting,
        "max_queued_requests": limits.max_waiting,
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 10,
    }


def build_app(config: ServeConfig, options: RayOptions = RayOptions()) -> Any:
    """The Ray Serve application (``ray.serve.Application``): ``Entry`` over ``ModelReplica``."""
    options.check()
    require_ray()
    from ray import serve

    from .replica import ModelReplica

    replica = serve.deployment(name="ModelReplica", **replica_deployment_options(config, options))(
        ModelReplica
    )
    entry = serve.deployment(
        name="Entry",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=ENTRY_MAX_ONGOING,
        graceful_shutdown_timeout_s=10,
    )(_entry_class())
    pinned = _cores_per_replica(options)
    return entry.bind(replica.bind(config, options.local, pinned), config, options.local)


def _cores_per_replica(options: RayOptions) -> int:
    """Cores to pin each replica to: on a one-machine CPU cluster, ``cpus_per_replica``
    when it is a whole number (0: leave placement to the OS)."""
    cpus = options.cpus_per_replica
    if options.local and not options.gpus_per_replica and cpus >= 1 and cpus == int(cpus):
        return int(cpus)
    return 0


def _entry_class() -> type:
    """``Entry``, made when Ray is imported (``serve.ingress`` needs it)."""
    from ray import serve

    @serve.ingress()
    class Entry:
        """The HTTP ingress: page and API over ``RayBackend``."""

        def __init__(self, replicas: Any, config: ServeConfig, loopback: bool) -> None:
            from ..serve.app import load_service
            from ..serve.visitors import Access
            from .backend import RayBackend
            from .loopback import keep_replica_on_loopback

            if loopback:
                keep_replica_on_loopback()

            app_name = serve.get_replica_context().app_name  # "default" under `serve run`

            def backend(service: Any) -> RayBackend:
                return RayBackend(
                    replicas,
                    service.model,
                    service.resolver.loaded,
                    wait_s=config.limits.max_stall_seconds,
                    app_name=app_name,
                )

            self.service = load_service(config, backend=backend)
            self.access = Access(tuple(config.trusted_proxies), tuple(config.api_keys))

        def __serve_build_asgi_app__(self) -> Any:
            from ..serve.app import create_app

            return create_app(self.service, access=self.access)

        def __del__(self) -> None:
            service = getattr(self, "service", None)
            if service is not None:
                service.close()

    return Entry


def start_ray(options: RayOptions) -> None:
    """Start a local Ray cluster on 127.0.0.1 (or join ``options.address``); quiet, no
    dashboard, no usage report."""
    require_ray()
    if options.local:
        set_ray_loopback_env()
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if options.local:
        kwargs.update(
            address="local",  # a cluster of its own, whatever $RAY_ADDRESS or `ray start` says
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            object_store_memory=256 * 2**20,  # requests and events are small
        )
    else:
        kwargs["address"] = options.address
    ray.init(**kwargs)


def check_resources(options: RayOptions) -> None:
    """Raise ``SteeringError`` when this machine's Ray cluster cannot hold ``options.replicas``
    replicas (Ray would wait for the resources without end)."""
    import ray

    have = ray.cluster_resources()
    for flag, per, kind in (
        ("--cpus-per-replica", options.cpus_per_replica, "CPU"),
        ("--gpus-per-replica", options.gpus_per_replica, "GPU"),
    ):
        need = per * options.replicas
        if need > have.get(kind, 0.0) + 1e-9:
            raise SteeringError(
                f"{options.replicas} replicas x {flag} {per:g} need {need:g} {kind}s, but this "
                f"machine has {have.get(kind, 0.0):g}: lower {flag} or --replicas"
            )


QUIET = {"log_level": "WARNING"}  # Serve's own per-request and route logs


def run_app(config: ServeConfig, options: RayOptions, stop: threading.Event | None = None) -> bool:
    """Deploy the application on the running cluster and wait until it answers: True, or
    False when ``stop`` was set first. Raises ``SteeringError`` when a deployment fails (a
    replica that cannot load its model, say), with Ray's message."""
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=QUIET)
    target = serve.RunTarget(build_app(config, options), APP_NAME, "/", logging_config=QUIET)
    serve.run_many(
        [target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False
    )
    while not (stop and stop.is_set()):
        app = serve.status().applications.get(APP_NAME)
        status = str(getattr(app, "status", ""))
        if status.endswith("RUNNING"):
            return True
        if status.endswith("DEPLOY_FAILED") or status.endswith("UNHEALTHY"):
            raise SteeringError(f"the replicas did not start: {app.message}")  # type: ignore[union-attr]
        time.sleep(1)
    return False


def shutdown(options: RayOptions) -> None:
    """Stop the application; on a cluster this process started, Serve and the cluster too
    (on a shared one, only this application: others keep running)."""
    import ray
    from ray import serve

    try:
        if options.local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def serve_on_ray(config: ServeConfig, options: RayOptions) -> None:
    """``steering serve --replicas N``: start, print the URL, serve until Ctrl-C/SIGTERM."""
    options.check()
    stop = threading.Event()
    started = time.monotonic()

    def on_signal(*_: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # a flag: nothing for Ray's code to swallow
        signal.signal(sig, on_signal)
    start_ray(options)
    for sig in (signal.SIGINT, signal.SIGTERM):  # again: ray.init sets its own
        signal.signal(sig, on_signal)
    started_here = Descendants() if options.local else None
    try:
        if options.local:
            check_resources(options)
        if stop.is_set() or not run_app(config, options, stop):
            return
        if started_here:
            started_here.remember()
        host = "localhost" if config.host in ("127.0.0.1", "0.0.0.0") else config.host
        replicas = f"{options.replicas} model replica{'s' if options.replicas > 1 else ''}"
        print(
            f"steering: {replicas} on Ray Serve, ready in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        print(f"  page: http://{host}:{config.port}/", flush=True)
        print(f"  API:  http://{host}:{config.port}/v1  (OpenAI-compatible)", flush=True)
        while not stop.wait(5):
            if started_here:
                started_here.remember()
    finally:
        print("steering: shutting down Ray Serve", flush=True)
        try:
            shutdown(options)
        finally:
            if started_here:
                started_here.end()


def app_builder(args: dict[str, str]) -> Any:
    """The application for Ray's CLI: ``serve run steering.ray_serve.app:app_builder
    replicas=2 model=google/gemma-2-2b-it sae=... gpus_per_replica=1`` (or the same keys
    under ``args:`` in a ``serve deploy`` config file). Keys: model, sae and presets
    (comma-separated), device, dtype, backend, replicas, max_replicas,
    target_ongoing_requests, cpus_per_replica, gpus_per_replica. Ray's own listeners follow
    the cluster's settings (see ``steering.ray_serve.loopback`` for one machine)."""
    known = {
        "model",
        "sae",
        "presets",
        "device",
        "dtype",
        "backend",
        "replicas",
        "max_replicas",
        "target_ongoing_requests",
        "cpus_per_replica",
        "gpus_per_replica",
    }
    unknown = sorted(set(args) - known)
    if unknown:
        raise SteeringError(f"unknown argument(s) {unknown}; use {sorted(known)}")

    def split(key: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in str(args.get(key, "")).split(",") if p.strip())

    config = replace(
        ServeConfig(),
        model=args.get("model") or None,
        saes=split("sae"),
        presets=split("presets"),
        device=args.get("device") or None,
        dtype=args.get("dtype") or None,
        backend=args.get("backend", "own"),
    )
    try:
        options = RayOptions(
            replicas=int(args.get("replicas", 2)),
            max_replicas=int(args["max_replicas"]) if args.get("max_replicas") else None,
            target_ongoing_requests=float(args.get("target_ongoing_requests", 4.0)),
            cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
            gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
            address="auto",  # `serve run` has started or joined the cluster
        )
    except ValueError as e:
        raise SteeringError(f"a number argument is not a number: {e}") from None
    return build_app(config, options)
