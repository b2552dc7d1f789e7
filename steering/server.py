"""One process, one model: the OpenAI-compatible API and the demo page on the same engine.

``create_app`` puts the API routes first and mounts the Gradio page at ``/`` last, so the page
catches every other path. ``serve`` loads a model (the shipped demo model by default), its SAEs
and presets, and runs uvicorn. Public-demo hygiene: no FastAPI docs, no Gradio run history or
monitoring, bounded uploads and a bounded queue.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import SteeringError
from .serving import ServerLimits, Service

if TYPE_CHECKING:
    import argparse

    from fastapi import FastAPI

log = logging.getLogger("steering.server")


@dataclass(frozen=True)
class ServeConfig:
    """What ``steering serve`` loads and where it listens."""

    model: str | None = None  # None: the shipped demo model, when this checkout has it
    saes: Sequence[str] = ()
    presets: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    device: str | None = None
    dtype: str | None = None
    layers: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)


def create_app(service: Service, *, page: bool = True) -> FastAPI:
    """The API (``/v1/...``, ``/healthz``) and, with ``page``, the demo page at ``/``."""
    from fastapi import FastAPI

    from .api import build_router

    app = FastAPI(title="steering", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(build_router(service))

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_id, "running_rows": len(service.engine.live)}

    if page:
        app = _mount_page(app, service)
    return app


def _mount_page(app: FastAPI, service: Service) -> FastAPI:
    import gradio as gr

    from ui.app import CSS, THEME, build_page

    page = build_page(service)
    page.queue(default_concurrency_limit=None, max_size=service.limits.max_waiting)
    return gr.mount_gradio_app(
        app,
        page,
        path="/",
        theme=THEME,
        css=CSS,
        footer_links=[],
        run_history=False,
        enable_monitoring=False,
        max_file_size=service.limits.max_upload_bytes,
        show_error=True,
        ssr_mode=False,
    )


def load_service(config: ServeConfig) -> Service:
    """The model, SAEs and presets ``config`` names, ready to serve."""
    from .formats import load_sae
    from .models import load_model
    from .preset_registry import PresetRegistry

    registry = PresetRegistry.discover(config.presets)
    model_id = None
    if config.model is None:
        (model, saes), model_id = _demo_model(), "steering-demo"
    else:
        model = load_model(
            config.model, device=config.device, dtype=config.dtype, layers=config.layers
        )
        saes = {}
    for ref in config.saes:
        saes[ref] = load_sae(ref, device=model.device)
    for problem in registry.problems:
        log.warning("preset skipped: %s", problem)
    return Service(model, saes, registry, config.limits, model_id=model_id)


def _demo_model() -> tuple[Any, dict[str, Any]]:
    if importlib.util.find_spec("steering.demo") is None:
        raise SteeringError(
            "no model given and this checkout has no demo model (steering.demo): pass --model"
        )
    from .demo import load_demo

    model, sae = load_demo()
    return model, {"demo-sae": sae}  # a public name: shared presets never show server paths


def serve(config: ServeConfig) -> None:
    """Load everything, print the URL, and serve until interrupted."""
    import uvicorn

    service = load_service(config)
    app = create_app(service)
    host = "localhost" if config.host in ("127.0.0.1", "0.0.0.0") else config.host
    print(f"steering: {service.model_id} with {len(service.presets)} presets", flush=True)
    print(f"  page: http://{host}:{config.port}/", flush=True)
    print(f"  API:  http://{host}:{config.port}/v1  (OpenAI-compatible)", flush=True)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        service.close()


# ---- the ``steering serve`` command ----


def add_serve_command(subparsers: Any) -> None:
    serve_cmd = subparsers.add_parser(
        "serve", help="serve the demo page and the OpenAI-compatible API on one model"
    )
    serve_cmd.add_argument("--model", help="model folder or Hub id (default: the demo model)")
    serve_cmd.add_argument(
        "--sae", action="append", default=[], help="an SAE folder or Hub reference to offer; repeat"
    )
    serve_cmd.add_argument(
        "--presets", action="append", default=[], metavar="PATH", help="a presets folder or file"
    )
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve_cmd.add_argument("--device", help="cpu, cuda, cuda:1, mps")
    serve_cmd.add_argument("--dtype", help="float32, bfloat16 or float16")
    serve_cmd.add_argument("--layers", help="decoder layer path template, e.g. 'model.layers.{i}'")
    defaults = ServerLimits()
    for name, help_text in LIMIT_HELP.items():
        flag = "--" + name.replace("_", "-")
        kind = type(getattr(defaults, name))
        default = getattr(defaults, name)
        serve_cmd.add_argument(flag, type=kind, default=default, help=f"{help_text} ({default})")
    serve_cmd.set_defaults(func=cmd_serve)


LIMIT_HELP = {
    "max_new_tokens": "most tokens one reply may have",
    "max_prompt_tokens": "most tokens a chat history may have",
    "max_edits": "most feature edits in one request's steering",
    "max_multiple": "largest |value x scale| in multiples of max activation",
    "max_raw": "largest |value x scale| in raw activation units",
    "max_waiting": "requests queued before the server answers busy",
    "max_batch": "rows decoded together (a compare is 2)",
}


def cmd_serve(args: argparse.Namespace) -> int:
    limits = ServerLimits(**{name: getattr(args, name) for name in LIMIT_HELP})
    config = ServeConfig(
        model=args.model,
        saes=args.sae,
        presets=args.presets,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        layers=args.layers,
        limits=limits,
    )
    serve(config)
    return 0
