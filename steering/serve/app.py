"""One process, one model: the OpenAI-compatible API and the demo page on the same backend.

``create_app`` puts the API routes first and mounts the Gradio page at ``/`` last, so the page
catches every other path. ``serve`` loads a model (the shipped demo model by default), its SAEs
and presets, and runs uvicorn. Public-demo hygiene: no FastAPI docs, no Gradio run history or
monitoring, only the page's own Gradio routes (``ui.guard``), bounded bodies and a bounded
queue.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SteeringError
from ..limits import Limits
from ..presets.saes import DEMO_SAE_REF
from .service import Service
from .visitors import Access

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("steering.server")


@dataclass(frozen=True)
class VLLMOptions:
    """``--vllm-...`` flags: see ``steering.vllm.backend.VLLMSettings``."""

    eager: bool = False
    in_process: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    executor: str | None = None  # "mp" or "ray" (vLLM's distributed_executor_backend)
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.85


@dataclass(frozen=True)
class ServeConfig:
    """What ``steering serve`` loads and where it listens; ``trusted_proxies`` and
    ``api_keys`` are the ``Access`` its API gives visitors (``steering.serve.visitors``)."""

    model: str | None = None  # None: the shipped demo model, when this checkout has it
    saes: Sequence[str] = ()
    presets: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    device: str | None = None
    dtype: str | None = None
    layers: str | None = None
    device_map: str | None = None  # "auto": the own engine spreads the model over every GPU
    limits: Limits = field(default_factory=Limits)
    trusted_proxies: Sequence[str] = ()
    api_keys: Sequence[str] = ()
    backend: str = "own"  # "own": this project's engine; "vllm": vLLM (steering.vllm)
    vllm: VLLMOptions = field(default_factory=lambda: VLLMOptions())


def create_app(service: Service, *, page: bool = True, access: Access | None = None) -> FastAPI:
    """The API (``/v1/...``, ``/healthz``) and, with ``page``, the demo page at ``/``.

    ``access`` says which proxies' forwarded addresses to trust and which API keys, if any,
    the API needs (default: neither: each client address is a visitor). Uvicorn's own
    forwarded-header handling must be off (``proxy_headers=False``, as ``serve`` runs it):
    only ``access`` decides who a client is.
    """
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import JSONResponse

    from .features_api import build_features_router
    from .openai_api import ApiRoute, build_router
    from .visitors import Visitors
    from .workers import Workers

    app = FastAPI(title="steering", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    visitors = Visitors(service.limits, access or Access())
    workers = Workers(service.limits.max_request_threads)
    app.state.service, app.state.visitors = service, visitors
    app.include_router(build_features_router(service, visitors, workers))  # before /v1/{path}
    app.include_router(build_router(service, visitors, workers))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    health_router = APIRouter(route_class=ApiRoute)

    @health_router.get("/healthz", responses={503: {"description": "the engine is down"}})
    async def health() -> Any:
        """ "ok" (200), or "down" (503) when the engine thread is dead or has made no progress
        for ``max_stall_seconds`` while it had work; with what the server is doing."""
        state = service.health()
        stalled = float(state.get("stalled_seconds", 0.0))
        problems = [] if state["engine_alive"] else ["the engine has stopped"]
        if stalled > service.limits.max_stall_seconds:
            problems.append(
                f"the engine has made no progress for {stalled:.0f} s with requests in flight "
                f"(max_stall_seconds {service.limits.max_stall_seconds:g})"
            )
        answer = {
            "status": "down" if problems else "ok",
            **({"problems": problems} if problems else {}),
            **state,
            **workers.health(),
            "visitor_requests_in_flight": visitors.in_flight(),
        }
        return JSONResponse(answer, status_code=503 if problems else 200)

    app.include_router(health_router)
    if page:
        app = _mount_page(app, service)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The API's own OpenAPI document (the page's routes are not in it), built once."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from .. import __version__
        from .chat_request import openapi_schemas

        schema = get_openapi(
            title="steering",
            version=__version__,
            summary="Feature steering with SAEs: an OpenAI-compatible chat completions API",
            routes=app.routes,
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
        app.openapi_schema = schema
    return app.openapi_schema


def _mount_page(app: FastAPI, service: Service) -> FastAPI:
    """The composition root: the only place in ``steering`` that imports the page (``ui``).

    The page is mounted behind ``ui.guard.PageGuard``: only the routes it uses answer, with
    bounded bodies and no objects (file references) in event data."""
    import gradio as gr
    from starlette.routing import Mount

    from ui.app import CSS, HEAD, THEME, build_page
    from ui.guard import PageGuard, browser_only_events, max_event_bytes

    page = build_page(service)
    page.queue(default_concurrency_limit=None, max_size=service.limits.max_waiting)
    # each session's state is bounded by max_conversation_chars; this bounds their number
    page.state_session_capacity = service.limits.max_page_sessions
    app = gr.mount_gradio_app(
        app,
        page,
        path="/",
        theme=THEME,
        css=CSS,
        head=HEAD,
        footer_links=[],
        run_history=False,
        enable_monitoring=False,
        max_file_size=service.limits.max_upload_bytes,
        show_error=False,  # a gr.Error's message is shown; other exceptions' text never is
        ssr_mode=False,
    )
    # Gradio checks that a file named in an event was uploaded only in an app it launched
    # itself; a mounted app is never launched, so without this any server path is read.
    page.has_launched = True
    mount = app.routes[-1]  # the page, mounted last at /
    if not isinstance(mount, Mount) or mount.path != "":
        raise RuntimeError(f"the page's mount was not found at / (found {mount!r})")
    mount.app = PageGuard(
        mount.app,
        max_event_bytes=max_event_bytes(service.limits),
        browser_only=browser_only_events(page.fns),
    )
    return app


def load_service(config: ServeConfig, *, backend: Any = None) -> Service:
    """The model, SAEs and presets ``config`` names, ready to serve, on the backend
    ``config.backend`` names, or on ``backend`` (a ``Backend``, or a function of the service
    that makes one) when given: then the model is loaded without weights (meta device) and
    its SAEs on the CPU, for tokenizing and checking plans where the backend runs the model
    elsewhere (``steering.ray_serve``)."""
    from ..formats import load_sae
    from ..models import load_model
    from ..presets.library import PresetRegistry

    if config.backend not in ("own", "vllm"):
        raise SteeringError(f"backend {config.backend!r} is not one of own, vllm")
    weights = backend is None
    registry = PresetRegistry.discover(config.presets)
    model_id = None
    if config.model is None:
        (model, saes), model_id = _demo_model(weights), "steering-demo"
    else:
        model = load_model(
            config.model,
            device=config.device,
            dtype=config.dtype,
            layers=config.layers,
            device_map=config.device_map,
            weights=weights,
        )
        saes = {}
    sae_device = model.device if weights else "cpu"
    for ref in config.saes:
        saes[ref] = load_sae(ref, device=sae_device)
    for problem in registry.problems:
        log.warning("preset skipped: %s", problem)
    if backend is None and config.backend == "vllm":
        backend = _vllm_backend(config, model_id is not None)
    return Service(model, saes, registry, config.limits, model_id=model_id, backend=backend)


def _vllm_backend(config: ServeConfig, demo: bool) -> Any:
    """A factory of the vLLM backend for a service: it hooks the service's SAEs."""
    from ..vllm.backend import VLLMSettings, start_vllm_backend

    if demo:
        from ..demo import MODEL_DIR

        source, dtype = str(MODEL_DIR), "float32"
    else:
        source, dtype = str(config.model), config.dtype or "auto"
    options = config.vllm
    settings = VLLMSettings(
        model=source,
        dtype=dtype,
        enforce_eager=options.eager,
        multiprocess=not options.in_process,
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
        distributed_executor_backend=options.executor,
        kv_cache_gib=options.kv_cache_gib,
        gpu_memory_utilization=options.gpu_memory_utilization,
    )

    def start(service: Service) -> Any:
        saes = list({id(sae): sae for sae in service.resolver.loaded.values()}.values())
        return start_vllm_backend(service.model, saes, settings, service.limits)

    return start


def _demo_model(weights: bool = True) -> tuple[Any, dict[str, Any]]:
    if importlib.util.find_spec("steering.demo") is None:  # a build without the demo world
        raise SteeringError(
            "no model given and this checkout has no demo model (steering.demo): pass --model"
        )
    from ..demo import load_demo

    model, sae = load_demo(weights=weights)
    return model, {DEMO_SAE_REF: sae}  # a public name: shared presets never show server paths


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve(config: ServeConfig) -> None:
    """Load everything, print the URL, and serve until interrupted."""
    import uvicorn

    access = Access(tuple(config.trusted_proxies), tuple(config.api_keys))
    service = load_service(config)
    app = create_app(service, access=access)
    host = "localhost" if config.host in ("127.0.0.1", "0.0.0.0") else config.host
    print(f"steering: {service.model_id} with {len(service.presets)} presets", flush=True)
    print(f"  page: http://{host}:{config.port}/", flush=True)
    print(f"  API:  http://{host}:{config.port}/v1  (OpenAI-compatible)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it
    # found: Python's default would end the process here, before ``service.close()`` stops
    # the backend (vLLM's engine-core process would outlive the server)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.run(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            proxy_headers=False,  # ``access`` alone decides which forwarded addresses count
            timeout_graceful_shutdown=5,  # in-flight requests end "cancelled", not block exit
        )
    finally:
        service.close()
