"""The answers of ``POST /v1/chat/completions``: a whole reply, or server-sent events, in
OpenAI's shapes (choices, usage, per-token logprobs), built from a request's events. A sweep's
choices (and each of their chunks) also carry their ``sweep_scale``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..plan import SteeringPlan
from ..requests import Event
from .api_errors import ApiError
from .backend import EventStream
from .chat_request import ChatRequest
from .service import Service
from .visitors import Ticket

log = logging.getLogger("steering.server")

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


async def complete(
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
                **_sweep_scale(body, i),
            }
            for i, c in enumerate(choices)
        ],
        "usage": _usage([c.prompt for c in choices], [c.completion for c in choices]),
        "steering": {"edits": len(plan.active_edits), "warnings": warnings},
    }


async def sse(
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
        yield _chunk(
            head, i, {"role": "assistant", "content": ""}, None, extra=_sweep_scale(body, i)
        )
    async for event in handle:  # leaving early (client gone) cancels the request
        prompt[event.row], completion[event.row] = event.prompt_tokens, event.completion_tokens
        ticket.tokens = sum(prompt) + sum(completion)
        if event.finish_reason == "error":
            yield _data({"error": GENERATION_FAILED.body()})
            break
        logprobs = None
        if body.logprobs and event.logprob is not None and event.token_id is not None:
            logprobs = {"content": [_logprob_entry(event, tokenizer)]}
        extra = _sweep_scale(body, event.row)
        if event.delta or logprobs:
            yield _chunk(head, event.row, {"content": event.delta}, None, logprobs, extra)
        if event.finish_reason:
            yield _chunk(head, event.row, {}, event.finish_reason, extra=extra)
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
    extra: dict[str, Any] | None = None,
) -> str:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return _data({**head, "choices": [{**choice, **(extra or {})}]})


def _sweep_scale(body: ChatRequest, row: int) -> dict[str, float]:
    """``{"sweep_scale": m}`` for row ``row`` of a sweep; nothing for other requests."""
    return {} if body.sweep is None else {"sweep_scale": body.sweep[row]}


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
