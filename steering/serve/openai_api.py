"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (plain and SSE), ``GET /v1/models``,
and the extensions ``GET /v1/presets`` and ``POST /v1/activations`` (which SAE features fire at
each token of a text or a chat, on the unsteered model). ``GET /openapi.json`` documents it.

Extensions, sent by OpenAI clients through ``extra_body``:

- ``steering``: a preset object (the preset file format), or ``{"presets": [{"name": ...,
  "scale": ...}]}`` naming this server's presets. Only SAEs the server has loaded may be used.
- ``compare: true``: also generate the unsteered reply in the same batch, with the same random
  numbers: ``choices[0]`` is steered, ``choices[1]`` the baseline.
- ``sweep: [0, 1, 2, 4]``: a strength sweep, one reply per multiplier of the steering's
  strengths in the same batch with the same random numbers: ``choices[i]`` (with
  ``sweep_scale``) is the steering at ``sweep[i]``, 0 the unsteered reply.
- ``top_k``, ``repetition_penalty``, ``min_tokens``: as vLLM's server names them.

A preset is also a model name: ``/v1/models`` lists the model and ``MODEL:PRESET`` for each of
this server's presets, so a client that can only pick a model still gets steering.

Requests are checked strictly: a field this server does not implement (``tools``,
``response_format``, ``n`` > 1, ...) or does not know is a 400 naming it, never silently
ignored. Errors follow OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Bounds come before work (a public server's anonymous visitors): the visitor and its limits
(``visitors``: 401, 429), the media type and body size (``bodies``: 415, 413), then, in a
bounded worker thread (``workers``), the JSON's depth, the message count and characters, the
steering and the tokenizer. A client that leaves cancels its request, streaming or not.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ..activations import ActivationProbe, TokenActivations
from ..errors import Busy, LimitError, PromptTooLong, SteeringError
from ..plan import SteeringPlan
from ..presets.library import PresetEntry
from ..presets.saes import is_server_path
from ..presets.schema import NamedPresets, Preset, PresetRef
from ..sae import SAE
from ..sampling import SamplingParams
from .api_errors import INTERNAL_ERROR, ApiError, retry_after, shown
from .backend import EventStream
from .bodies import parse_json, read_body, require_json
from .chat_request import (
    ACTIVATIONS_BODY,
    REQUEST_BODY,
    ChatRequest,
    check_chat,
    check_stop,
    parse_activations_request,
    parse_chat_request,
)
from .chat_response import complete, sse
from .service import Service
from .visitors import Ticket, Visitors
from .workers import Workers

log = logging.getLogger("steering.server")

# Engine setting names -> the OpenAI parameter a client sent.
PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
ROUTES = (
    "GET /v1/models",
    "GET /v1/models/{id}",
    "GET /v1/presets",
    "POST /v1/chat/completions",
    "POST /v1/activations",
    "GET /v1/features/search",
    "POST /v1/features/contrast",
    "GET /v1/features/neighbours",
    "GET /openapi.json",  # keep last; feature routes (features_api.py) go above
)
DISCONNECT_POLL_S = 0.5  # how often a plain (non-streaming) request checks its client is there


class ApiRoute(APIRoute):
    """A route whose ``ApiError`` becomes its answer and whose unexpected exception becomes
    ``INTERNAL_ERROR`` (logged with its traceback for the host, never shown)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return e.response()
            except HTTPException:
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path[:100])
                return INTERNAL_ERROR.response()

        return guarded


class AnyText(Convertor[str]):
    """A path part of any characters: Starlette's ``path`` (``.*``) stops at a newline, and a
    ``/v1/...`` URL it does not match would fall through to the page's 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", AnyText())


def build_router(service: Service, visitors: Visitors, workers: Workers) -> APIRouter:
    """The API's routes over ``service``: models, presets and chat completions, each visitor
    within its limits (``visitors``), CPU work in ``workers``."""
    router = APIRouter(route_class=ApiRoute)
    cards = [_preset_card(service, entry) for entry in service.presets.values()]

    @router.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        visitors.identify(request)  # 401 without a key where the host sets keys
        ids = [service.model_id, *(preset_model_id(service, s) for s in preset_slugs(service))]
        return {"object": "list", "data": [_model_card(model_id) for model_id in ids]}

    @router.get("/v1/models/{model_id:anything}")
    def model(model_id: str, request: Request) -> Any:
        visitors.identify(request)
        ids = [service.model_id, *(preset_model_id(service, s) for s in preset_slugs(service))]
        if model_id not in ids:
            message = f"model {shown(model_id)} is not served here; use one of {ids}"
            return ApiError(404, message, param="model", code="model_not_found").response()
        return _model_card(model_id)

    @router.get("/v1/presets")
    def presets(request: Request) -> dict[str, Any]:
        visitors.identify(request)
        return {"object": "list", "data": cards}

    @router.post("/v1/chat/completions", openapi_extra=REQUEST_BODY)
    async def chat_completions(request: Request) -> Any:
        visitor = visitors.identify(request)
        require_json(request)
        ticket = visitors.admit(visitor)
        try:
            raw = await read_body(request, service.limits.max_body_bytes)
            body, handle, plan, warnings = await _prepare(service, workers, raw, visitor)
        except BaseException:
            ticket.release()
            raise
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        served_by = _served_by(handle)
        if body.stream:
            events = sse(service, body, handle, reply_id, ticket)
            response = EventStreamResponse(events, handle, ticket)
            response.headers.update(served_by)
            return response
        try:
            answer = await _unless_client_leaves(
                request, complete(service, body, handle, reply_id, plan, warnings, ticket)
            )
            if served_by and isinstance(answer, dict):
                return JSONResponse(answer, headers=served_by)
            return answer
        finally:
            handle.cancel()
            ticket.release()

    @router.post("/v1/activations", openapi_extra=ACTIVATIONS_BODY)
    async def activations(request: Request) -> Any:
        """Which SAE features fire at each token of a text or a chat, on the unsteered model."""
        visitor = visitors.identify(request)
        require_json(request)
        ticket = visitors.admit(visitor)
        try:
            raw = await read_body(request, service.limits.max_body_bytes)
            work = _activations(service, workers, raw, visitor, ticket)
            return await _unless_client_leaves(request, work)
        finally:
            ticket.release()

    @router.api_route(
        "/v1",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    @router.api_route(
        "/v1/{path:anything}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    def unknown(request: Request, path: str = "") -> JSONResponse:
        message = f"no route {request.method} /v1/{path[:100]}; this server answers " + ", ".join(
            ROUTES
        )
        return ApiError(404, message, code="unknown_url").response()

    return router


async def _prepare(
    service: Service, workers: Workers, raw: bytes, visitor: str
) -> tuple[ChatRequest, EventStream, SteeringPlan, list[str]]:
    """Parse, check and submit the body in a worker thread. Should this task be cancelled
    while the thread runs, the request it submitted is cancelled too."""
    submitted: list[EventStream] = []

    def work() -> tuple[ChatRequest, EventStream, SteeringPlan, list[str]]:
        body = parse_chat_request(parse_json(raw))
        check_chat(body, service.limits)
        check_stop(body, service.limits)
        handle, plan, warnings = _submit(service, body, visitor)
        submitted.append(handle)
        return body, handle, plan, warnings

    try:
        return await workers.run(work)
    except BaseException:
        for handle in submitted:
            handle.cancel()
        raise


async def _activations(
    service: Service, workers: Workers, raw: bytes, visitor: str, ticket: Ticket
) -> dict[str, Any]:
    """The answer of ``POST /v1/activations``: checked and tokenized in a worker thread, run
    by the backend between two decode steps (awaited on the event loop, holding no thread; a
    client that leaves first cancels it), and written out in a worker thread."""

    def prepare() -> tuple[str, SAE, ActivationProbe]:
        body = parse_activations_request(parse_json(raw))
        check_chat(body, service.limits)
        messages = [_message(m) for m in body.messages or []]
        text = body.text if body.text is not None else messages
        try:
            ref, sae = service.offered_sae(body.sae)
            probe = service.activation_probe(
                text, ref, features=body.features, top_k=body.top_k, visitor=visitor
            )
        except Exception as e:
            raise _as_api_error(e) from e
        return ref, sae, probe

    ref, sae, probe = await workers.run(prepare)
    try:
        future = service.backend.run(probe.run)
    except Exception as e:
        raise _as_api_error(e) from e
    try:
        found = await asyncio.wait_for(
            asyncio.wrap_future(future), timeout=service.limits.max_stall_seconds
        )
    except TimeoutError:
        busy = Busy(f"the engine did not get to it within {service.limits.max_stall_seconds:g} s")
        raise _as_api_error(busy) from None
    ticket.tokens = len(probe.token_ids)
    return await workers.run(lambda: _activations_answer(ref, sae, probe.result(found)))


def _activations_answer(ref: str, sae: SAE, found: TokenActivations) -> dict[str, Any]:
    labels = sae.labels
    tokens = [
        {
            "text": text,
            "top": [
                {"feature": f, "activation": a, "label": labels.get(f)} for f, a in found.top[t]
            ],
            "features": {str(f): values[t] for f, values in found.features.items()},
        }
        for t, text in enumerate(found.tokens)
    ]
    return {
        "object": "activations",
        "sae": ref,
        "tokens": tokens,
        "reply_start": found.reply_start,
        "max_activation": {str(f): m for f, m in found.max_activation.items()},
    }


def _message(m: Any) -> dict[str, str]:
    """A parsed chat message as the chat template takes it (``developer`` is ``system``)."""
    return {"role": "system" if m.role == "developer" else m.role, "content": m.text()}


async def _unless_client_leaves(request: Request, work: Any) -> Any:
    """The result of ``work``; when the client disconnects first, ``work`` is cancelled (so
    is its request) and the answer is a 499 that nobody reads."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                message = "the client closed the request; it was cancelled"
                return ApiError(499, message, code="client_closed_request").response()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its handle is cancelled


def _served_by(handle: EventStream) -> dict[str, str]:
    """``X-Steering-Replica``: which model replica answers, when the backend has several
    (``steering.ray_serve``); no header otherwise."""
    replica = getattr(handle, "served_by", None)
    return {"X-Steering-Replica": replica} if replica else {}


class EventStreamResponse(StreamingResponse):
    """An SSE answer that cancels its request and ends its visitor's ticket however it ends
    (finished, client gone, or gone before the stream began)."""

    def __init__(self, content: AsyncIterator[str], handle: EventStream, ticket: Ticket) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.handle, self.ticket = handle, ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.cancel()
            self.ticket.release()


def preset_slugs(service: Service) -> list[str]:
    return [entry.preset.slug for entry in service.presets.values()]


def preset_model_id(service: Service, slug: str) -> str:
    """The model name that applies the preset ``slug``: ``MODEL:slug``."""
    return f"{service.model_id}:{slug}"


def _submit(
    service: Service, body: ChatRequest, visitor: str = ""
) -> tuple[EventStream, SteeringPlan, list[str]]:
    steering = _steering(service, body)
    messages = [_message(m) for m in body.messages]
    try:
        sampling = _sampling(body, service.limits.default_new_tokens)
        if body.sweep is not None:
            plans, warnings = service.sweep_plans(steering, body.sweep)
            handle = service.submit_rows(messages, plans, sampling, visitor=visitor)
            plan = max(plans, key=lambda p: len(p.active_edits))
            return handle, plan, warnings
        plan, warnings = service.plan(steering)
        handle = service.submit(messages, plan, sampling, compare=body.compare, visitor=visitor)
    except Exception as e:
        length = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        raise _as_api_error(e, {**PARAM_NAMES, "max_new_tokens": length}) from e
    return handle, plan, warnings


def _steering(service: Service, body: ChatRequest) -> Preset | NamedPresets | None:
    """The request's steering: its ``steering`` field, or the preset its model name names."""
    if body.model in (service.model_id, "default"):
        return body.steering
    model, _, slug = body.model.partition(":")
    if model != service.model_id or slug not in preset_slugs(service):
        models = [service.model_id, *(preset_model_id(service, s) for s in preset_slugs(service))]
        message = f"model {shown(body.model)} is not served here; use one of {models}"
        raise ApiError(404, message, param="model", code="model_not_found")
    if body.steering is not None:
        message = f"steering: the model name already applies the preset {slug!r}; give one"
        raise ApiError(400, message, param="steering", code="invalid_steering")
    return NamedPresets(presets=[PresetRef(name=slug, scale=1.0)])


def _sampling(body: ChatRequest, default_tokens: int) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        max_new_tokens=default_tokens if max_tokens is None else max_tokens,
        min_new_tokens=body.min_tokens,
        stop=tuple(stop),
        seed=body.seed,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )


def _as_api_error(error: Exception, names: dict[str, str] = PARAM_NAMES) -> ApiError:
    """A library error as OpenAI's error shape, mapped by its class and ``param`` (``names``:
    engine setting -> the request field the client sent)."""
    if isinstance(error, Busy):
        message = f"the server is busy: {error}"
        return ApiError(503, message, code="server_busy", headers=retry_after(1))
    if not isinstance(error, SteeringError):
        raise error
    engine_param = error.param or "steering"  # plan and preset errors come from the steering
    param = names.get(engine_param, engine_param)
    message = str(error)
    if message.startswith(engine_param):  # say it in the client's words
        message = param + message[len(engine_param) :]
    if isinstance(error, PromptTooLong):
        code = "context_length_exceeded"
    elif isinstance(error, LimitError):
        code = "limit_exceeded"
    elif param == "steering":
        code, message = "invalid_steering", f"steering: {message}"
    else:
        code = "invalid_messages" if param == "messages" else "invalid_value"
    return ApiError(400, message, param=param, code=code)


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "steering"}


def _preset_card(service: Service, entry: PresetEntry) -> dict[str, Any]:
    """A preset as ``/v1/presets`` shows it: its SAEs by the public references this server
    offers them under (usable as they are in a request's ``steering``), never a server path."""
    preset = entry.preset
    saes = service.resolver.resolve(preset, base_dir=entry.base_dir)
    dumped = preset.model_dump(mode="json")
    for declared in dumped["saes"]:
        public = service.public_ref(saes[declared["id"]])
        if public is not None or is_server_path(declared["ref"]):
            declared["ref"] = public or "(a local SAE of this server)"
    features = [
        {"label": e.label, "feature": e.feature, "mode": e.mode, "unit": e.unit, "value": e.value}
        for e in preset.edits
    ]
    return {
        "name": preset.name,
        "slug": preset.slug,
        "description": preset.description,
        "scale": preset.scale,
        "features": features,
        "preset": dumped,
    }
