"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (plain and SSE), ``GET /v1/models``,
and the extension ``GET /v1/presets``. ``GET /openapi.json`` documents it.

Extensions, sent by OpenAI clients through ``extra_body``:

- ``steering``: a preset object (the preset file format), or ``{"presets": [{"name": ...,
  "scale": ...}]}`` naming this server's presets. Only SAEs the server has loaded may be used.
- ``compare: true``: also generate the unsteered reply in the same batch, with the same random
  numbers: ``choices[0]`` is steered, ``choices[1]`` the baseline.
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
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ..errors import Busy, LimitError, PromptTooLong, SteeringError
from ..limits import Limits
from ..plan import SteeringPlan
from ..presets.library import PresetEntry
from ..presets.saes import is_server_path
from ..presets.schema import NamedPresets, Preset, PresetRef, error_lines
from ..requests import Event
from ..sampling import MAX_TOP_LOGPROBS, SamplingParams
from .api_errors import INTERNAL_ERROR, ApiError, clip, retry_after, shown
from .backend import EventStream
from .bodies import parse_json, read_body, require_json
from .service import Service
from .visitors import Ticket, Visitors
from .workers import Workers

log = logging.getLogger("steering.server")

# Engine setting names -> the OpenAI parameter a client sent.
PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
# OpenAI fields this server does not implement: a request that uses one gets a 400 naming it.
UNSUPPORTED = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
    "parallel_tool_calls": "tool calls",
    "response_format": "structured output",
    "logit_bias": "logit bias",
    "audio": "audio output",
    "modalities": "modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning settings",
}
ROUTES = (
    "GET /v1/models",
    "GET /v1/models/{id}",
    "GET /v1/presets",
    "POST /v1/chat/completions",
    "GET /openapi.json",
)
JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}
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


class TextPart(BaseModel):
    """A content part; only text is implemented."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the chat; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


def _steering_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "named" if "presets" in value else "preset"
    return None if value is None else "preset"  # anything else fails as a preset


SteeringField = Annotated[
    Annotated[Preset, Tag("preset")] | Annotated[NamedPresets, Tag("named")],
    Discriminator(_steering_kind),
]


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    """End the stream with a chunk that holds the usage."""


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: OpenAI's fields that this server implements,
    and its extensions. Any other field is refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(max_length=300)
    """This server's model id, or MODEL:PRESET to apply one of its presets."""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    """Deprecated by OpenAI in favour of max_completion_tokens; either works."""
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    """Must be 1; compare gives a second (unsteered) reply."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    """Return each reply token's log-probability (steered and baseline alike)."""
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """With logprobs: also the most likely tokens at each position."""
    presence_penalty: float = 0.0
    """Only 0 is implemented (see repetition_penalty)."""
    frequency_penalty: float = 0.0
    """Only 0 is implemented (see repetition_penalty)."""
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # extensions
    steering: SteeringField | None = None
    """A preset object (the preset file format) or {"presets": [{"name", "scale"}]}."""
    compare: bool = False
    """Also generate the unsteered reply, with the same random numbers, as choices[1]."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    """EOS and stop strings cannot end a reply before this many tokens."""


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

    @router.get("/v1/models/{model_id:path}")
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

    @router.post("/v1/chat/completions", openapi_extra=_REQUEST_BODY)
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
        if body.stream:
            events = _sse(service, body, handle, reply_id, ticket)
            return EventStreamResponse(events, handle, ticket)
        try:
            return await _unless_client_leaves(
                request, _complete(service, body, handle, reply_id, plan, warnings, ticket)
            )
        finally:
            handle.cancel()
            ticket.release()

    @router.api_route(
        "/v1",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    @router.api_route(
        "/v1/{path:path}",
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
        body = _parse(parse_json(raw))
        _check_chat(body, service.limits)
        _check_stop(body, service.limits)
        handle, plan, warnings = _submit(service, body, visitor)
        submitted.append(handle)
        return body, handle, plan, warnings

    try:
        return await workers.run(work)
    except BaseException:
        for handle in submitted:
            handle.cancel()
        raise


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


def _parse(data: Any) -> ChatRequest:
    if not isinstance(data, dict):
        kind = JSON_KINDS.get(type(data), "a value")
        raise ApiError(400, f"the body must be a JSON object, not {kind}", code="invalid_json")
    for name in data.keys() & UNSUPPORTED.keys():
        if data[name] not in (None, [], {}):
            raise ApiError(
                400,
                f"{name}: this server does not implement {UNSUPPORTED[name]}",
                param=name,
                code="unsupported_parameter",
            )
    # null means "the default" for every field, as OpenAI's nullable fields do
    data = {k: v for k, v in data.items() if k not in UNSUPPORTED and v is not None}
    try:
        body = ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) != 0:
            message = f"{name}: only 0 is implemented; use repetition_penalty"
            raise ApiError(400, message, param=name, code="unsupported_parameter")
    if body.n != 1:
        message = "n: only 1 is implemented; use compare for a second (unsteered) reply"
        raise ApiError(400, message, param="n", code="unsupported_parameter")
    lengths = (body.max_tokens, body.max_completion_tokens)
    if None not in lengths and lengths[0] != lengths[1]:
        message = "max_completion_tokens: differs from max_tokens; give one of them"
        raise ApiError(400, message, param="max_completion_tokens", code="invalid_value")
    if body.top_logprobs is not None and not body.logprobs:
        message = "top_logprobs: needs logprobs set to true"
        raise ApiError(400, message, param="top_logprobs", code="invalid_value")
    return body


def _validation_error(error: ValidationError) -> ApiError:
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] == "steering":  # the preset's own messages: path.to.field lines
        problems = [line for line in error_lines(error) if line.startswith("steering")]
        message = "steering: invalid preset:\n  " + "\n  ".join(problems)
        return ApiError(400, message, param="steering", code="invalid_steering")
    param = clip(".".join(loc)) or None  # field names may be a visitor's own keys
    if first["type"] == "extra_forbidden":
        errors = error.errors(include_url=False)
        unknown = [clip(".".join(map(str, e["loc"]))) for e in errors if e["type"] == first["type"]]
        listed = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" * (len(unknown) > 10))
        message = f"{listed}: unrecognized request argument; see GET /openapi.json"
        return ApiError(400, message, param=param, code="unrecognized_argument")
    return ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def _check_chat(body: ChatRequest, limits: Limits) -> None:
    """The chat's size against ``limits``, before anything tokenizes it."""
    if len(body.messages) > limits.max_messages:
        message = f"messages: {len(body.messages)} messages, at most {limits.max_messages}"
        raise ApiError(400, message + " (max_messages)", param="messages", code="limit_exceeded")
    total = 0
    for i, m in enumerate(body.messages):
        chars = len(m.text())
        total += chars
        if chars > limits.max_message_chars:
            param = f"messages.{i}.content"
            message = f"{param}: {chars} characters, at most {limits.max_message_chars}"
            raise ApiError(
                400, message + " (max_message_chars)", param=param, code="limit_exceeded"
            )
    if total > limits.max_conversation_chars:
        message = f"messages: {total} characters in all, at most {limits.max_conversation_chars}"
        raise ApiError(
            400, message + " (max_conversation_chars)", param="messages", code="limit_exceeded"
        )


def _check_stop(body: ChatRequest, limits: Limits) -> None:
    """Stop strings against ``limits``; the messages name ``stop``, never echo its value."""
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    problem = None
    if len(stops) > limits.max_stop_strings:
        problem = f"{len(stops)} stop strings, at most {limits.max_stop_strings} (max_stop_strings)"
    elif any(not s for s in stops):
        problem = "a stop string is empty"
    else:
        for i, s in enumerate(stops):
            if len(s) > limits.max_stop_length:
                problem = (
                    f"stop string {i} has {len(s)} characters, at most {limits.max_stop_length} "
                    "(max_stop_length)"
                )
                break
    if problem is not None:
        raise ApiError(400, f"stop: {problem}", param="stop", code="invalid_value")


def _submit(
    service: Service, body: ChatRequest, visitor: str = ""
) -> tuple[EventStream, SteeringPlan, list[str]]:
    steering = _steering(service, body)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    try:
        plan, warnings = service.plan(steering)
        sampling = _sampling(body, service.limits.default_new_tokens)
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


GENERATION_FAILED = ApiError(
    500, "generating this reply failed; other requests were not affected", code="generation_failed"
)


class _Choice:
    """One row's reply as it is gathered from its events."""

    def __init__(self) -> None:
        self.text, self.finish, self.prompt, self.completion = "", "stop", 0, 0
        self.logprobs: list[dict[str, Any]] = []

    def add(self, event: Event, tokenizer: Any) -> None:
        self.text += event.delta
        self.finish = event.finish_reason or self.finish
        self.prompt, self.completion = event.prompt_tokens, event.completion_tokens
        if event.logprob is not None and event.token_id is not None:
            self.logprobs.append(_logprob_entry(event, tokenizer))


async def _complete(
    service: Service,
    body: ChatRequest,
    handle: EventStream,
    reply_id: str,
    plan: SteeringPlan,
    warnings: list[str],
    ticket: Ticket,
) -> dict[str, Any]:
    tokenizer = service.model.tokenizer
    choices = [_Choice() for _ in handle.request.rows]
    async for event in handle:
        choices[event.row].add(event, tokenizer)
        ticket.tokens = sum(c.prompt + c.completion for c in choices)
    if any(c.finish == "error" for c in choices):
        raise GENERATION_FAILED
    return {
        **_head(service, body, reply_id, "chat.completion"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish,
                "logprobs": {"content": c.logprobs} if body.logprobs else None,
            }
            for i, c in enumerate(choices)
        ],
        "usage": _usage([c.prompt for c in choices], [c.completion for c in choices]),
        "steering": {"edits": len(plan.active_edits), "warnings": warnings},
    }


async def _sse(
    service: Service, body: ChatRequest, handle: EventStream, reply_id: str, ticket: Ticket
) -> AsyncIterator[str]:
    try:
        async for text in _sse_events(service, body, handle, reply_id, ticket):
            yield text
    except Exception:  # the answer has begun: say so in the stream, in OpenAI's shape
        log.exception("streaming %s failed", reply_id)
        yield _data({"error": GENERATION_FAILED.body()})


async def _sse_events(
    service: Service, body: ChatRequest, handle: EventStream, reply_id: str, ticket: Ticket
) -> AsyncIterator[str]:
    head = _head(service, body, reply_id, "chat.completion.chunk")
    tokenizer = service.model.tokenizer
    rows = len(handle.request.rows)
    prompt, completion = [0] * rows, [0] * rows
    for i in range(rows):
        yield _chunk(head, i, {"role": "assistant", "content": ""}, None)
    async for event in handle:  # leaving early (client gone) cancels the request
        prompt[event.row], completion[event.row] = event.prompt_tokens, event.completion_tokens
        ticket.tokens = sum(prompt) + sum(completion)
        if event.finish_reason == "error":
            yield _data({"error": GENERATION_FAILED.body()})
            break
        logprobs = None
        if body.logprobs and event.logprob is not None and event.token_id is not None:
            logprobs = {"content": [_logprob_entry(event, tokenizer)]}
        if event.delta or logprobs:
            yield _chunk(head, event.row, {"content": event.delta}, None, logprobs)
        if event.finish_reason:
            yield _chunk(head, event.row, {}, event.finish_reason)
    if body.stream_options is not None and body.stream_options.include_usage:
        yield _data({**head, "choices": [], "usage": _usage(prompt, completion)})
    yield "data: [DONE]\n\n"


def _logprob_entry(event: Event, tokenizer: Any) -> dict[str, Any]:
    """OpenAI's ``logprobs.content`` item for the event's token."""
    top = [_token_logprob(tokenizer, token, logprob) for token, logprob in event.top_logprobs]
    return {**_token_logprob(tokenizer, event.token_id, event.logprob), "top_logprobs": top}


def _token_logprob(tokenizer: Any, token_id: Any, logprob: Any) -> dict[str, Any]:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _chunk(
    head: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    finish: str | None,
    logprobs: dict[str, Any] | None = None,
) -> str:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return _data({**head, "choices": [choice]})


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _head(service: Service, body: ChatRequest, reply_id: str, kind: str) -> dict[str, Any]:
    """The fields every answer starts with; ``model`` is the id the client asked for."""
    model = service.model_id if body.model == "default" else body.model
    return {"id": reply_id, "object": kind, "created": int(time.time()), "model": model}


def _usage(prompt: Sequence[int], completion: Sequence[int]) -> dict[str, int]:
    # The compare reply counts the baseline row too: it is real work for the server.
    total_prompt, total_completion = sum(prompt), sum(completion)
    return {
        "prompt_tokens": total_prompt,
        "completion_tokens": total_completion,
        "total_tokens": total_prompt + total_completion,
    }


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


def openapi_schemas() -> dict[str, Any]:
    """The request body's JSON Schemas, for ``components.schemas`` of ``/openapi.json``."""
    _, schema = models_json_schema(
        [(ChatRequest, "validation")], ref_template="#/components/schemas/{model}"
    )
    return schema.get("$defs", {})


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
    }
}
