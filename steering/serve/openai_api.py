"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (plain and SSE), ``GET /v1/models``,
and the extension ``GET /v1/presets``.

Extensions, sent by OpenAI clients through ``extra_body``:

- ``steering``: a preset object (the preset file format), or ``{"presets": [{"name": ...,
  "scale": ...}]}`` naming this server's presets. Only SAEs the server has loaded may be used.
- ``compare: true``: also generate the unsteered reply in the same batch, with the same random
  numbers: ``choices[0]`` is steered, ``choices[1]`` the baseline.

Errors follow OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..chat import flatten_content
from ..errors import Busy, LimitError, PromptTooLong, SteeringError
from ..plan import SteeringPlan
from ..presets.schema import NamedPresets, Preset, error_lines
from ..sampling import SamplingParams
from .backend import EventStream
from .service import Service

# Engine setting names -> the OpenAI parameter a client sent.
PARAM_NAMES = {"max_new_tokens": "max_tokens"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


def _steering_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "named" if "presets" in value else "preset"
    return None if value is None else "preset"  # anything else fails as a preset


SteeringField = Annotated[
    Annotated[Preset, Tag("preset")] | Annotated[NamedPresets, Tag("named")],
    Discriminator(_steering_kind),
]


class ChatRequest(BaseModel):
    """The OpenAI fields this server uses; unknown ones are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    steering: SteeringField | None = None
    """A preset object (the preset file format) or ``{"presets": [{"name", "scale"}]}``."""
    compare: bool = False


def build_router(service: Service) -> APIRouter:
    """The API's routes over ``service``: models, presets and chat completions."""
    router = APIRouter()

    @router.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(service)]}

    @router.get("/v1/presets")
    def presets() -> dict[str, Any]:
        data = [_preset_card(e.preset) for e in service.presets.values()]
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = _parse(await _json(request))
            handle, plan, warnings = _submit(service, body)
        except ApiError as e:
            return e.response()
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            stream = _sse(service, body, handle, reply_id)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return await _complete(service, body, handle, reply_id, plan, warnings)

    return router


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None


def _parse(data: Any) -> ChatRequest:
    try:
        body = ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    if body.n != 1:
        raise ApiError(400, "n must be 1; use compare for a second reply", param="n", code="n")
    return body


def _validation_error(error: ValidationError) -> ApiError:
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] == "steering":  # the preset's own messages: path.to.field lines
        problems = [line for line in error_lines(error) if line.startswith("steering")]
        message = "steering: invalid preset:\n  " + "\n  ".join(problems)
        return ApiError(400, message, param="steering", code="invalid_steering")
    param = ".".join(loc) or None
    return ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def _submit(service: Service, body: ChatRequest) -> tuple[EventStream, SteeringPlan, list[str]]:
    if body.model not in (service.model_id, "default"):
        message = f"model {body.model!r} is not served here; use {service.model_id!r}"
        raise ApiError(404, message, param="model", code="model_not_found")
    try:
        plan, warnings = service.plan(body.steering)
        handle = service.submit(
            [{"role": m.role, "content": flatten_content(m.content)} for m in body.messages],
            plan,
            _sampling(body, service.limits.default_new_tokens),
            compare=body.compare,
        )
    except Exception as e:
        raise _as_api_error(e) from e
    return handle, plan, warnings


def _sampling(body: ChatRequest, default_tokens: int) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    max_tokens = body.max_completion_tokens or body.max_tokens
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_new_tokens=max_tokens or default_tokens,
        stop=tuple(stop),
        seed=body.seed,
    )


def _as_api_error(error: Exception) -> ApiError:
    """A library error as OpenAI's error shape, mapped by its class and ``param``."""
    if isinstance(error, Busy):
        return ApiError(503, f"the server is busy: {error}", code="server_busy")
    if not isinstance(error, SteeringError):
        raise error
    engine_param = error.param or "steering"  # plan and preset errors come from the steering
    param = PARAM_NAMES.get(engine_param, engine_param)
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


async def _complete(
    service: Service,
    body: ChatRequest,
    handle: EventStream,
    reply_id: str,
    plan: SteeringPlan,
    warnings: list[str],
) -> dict[str, Any]:
    rows = len(handle.request.rows)
    texts, finish, prompt, completion = [""] * rows, ["stop"] * rows, [0] * rows, [0] * rows
    async for event in handle:
        texts[event.row] += event.delta
        finish[event.row] = event.finish_reason or finish[event.row]
        prompt[event.row], completion[event.row] = event.prompt_tokens, event.completion_tokens
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts[i]},
            "finish_reason": finish[i],
            "logprobs": None,
        }
        for i in range(rows)
    ]
    return {
        **_head(service, reply_id, "chat.completion"),
        "choices": choices,
        "usage": _usage(prompt, completion),
        "steering": {"edits": len(plan.active_edits), "warnings": warnings},
    }


async def _sse(
    service: Service, body: ChatRequest, handle: EventStream, reply_id: str
) -> AsyncIterator[str]:
    head = _head(service, reply_id, "chat.completion.chunk")
    rows = len(handle.request.rows)
    prompt, completion = [0] * rows, [0] * rows
    for i in range(rows):
        yield _chunk(head, i, {"role": "assistant", "content": ""}, None)
    async for event in handle:  # leaving early (client gone) cancels the request
        prompt[event.row], completion[event.row] = event.prompt_tokens, event.completion_tokens
        if event.delta:
            yield _chunk(head, event.row, {"content": event.delta}, None)
        if event.finish_reason:
            yield _chunk(head, event.row, {}, event.finish_reason)
    if (body.stream_options or {}).get("include_usage"):
        yield _data({**head, "choices": [], "usage": _usage(prompt, completion)})
    yield "data: [DONE]\n\n"


def _chunk(head: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None) -> str:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
    return _data({**head, "choices": [choice]})


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _head(service: Service, reply_id: str, kind: str) -> dict[str, Any]:
    return {"id": reply_id, "object": kind, "created": int(time.time()), "model": service.model_id}


def _usage(prompt: list[int], completion: list[int]) -> dict[str, int]:
    # The compare reply counts the baseline row too: it is real work for the server.
    total_prompt, total_completion = sum(prompt), sum(completion)
    return {
        "prompt_tokens": total_prompt,
        "completion_tokens": total_completion,
        "total_tokens": total_prompt + total_completion,
    }


def _model_card(service: Service) -> dict[str, Any]:
    return {"id": service.model_id, "object": "model", "created": 0, "owned_by": "steering"}


def _preset_card(preset: Any) -> dict[str, Any]:
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
        "preset": preset.model_dump(mode="json"),
    }
