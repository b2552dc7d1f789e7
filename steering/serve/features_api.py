"""The API of the researcher's loop: search an SAE's features by label, by contrast between
two prompt sets, and by decoder neighbours (``steering.features``).

``build_features_router`` is included before the chat router, whose ``/v1/{path}`` catch-all
answers every other ``/v1`` URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import Busy, LimitError, SteeringError
from ..features.contrast import (
    check_sets,
    contrast_json,
    distinct_rendered,
    prompt_means,
    rank_contrast,
)
from ..features.labels import check_query, search_labels
from ..features.neighbours import cached_neighbours, neighbour_json
from ..features.neutral import neutral_prompts
from ..limits import FEATURE_FILES
from .api_errors import ApiError, shown
from .bodies import parse_json, read_body, require_json
from .chat_request import _json_object, _validation_error
from .openai_api import ApiRoute, _as_api_error, _unless_client_leaves
from .service import Service
from .visitors import Visitors
from .workers import Workers


def build_features_router(service: Service, visitors: Visitors, workers: Workers) -> APIRouter:
    """The feature search routes over ``service``, each visitor within its limits."""
    router = APIRouter(route_class=ApiRoute)
    add_label_routes(router, service, visitors, workers)
    add_contrast_routes(router, service, visitors, workers)
    return router


# ---- search by label text and by index ----


SEARCH_PARAMS = ("q", "sae", "limit")
SEARCH_LIMIT = 20  # results when the request names no limit
SEARCH_QUERY = {  # the OpenAPI document of the query string (read by hand: errors in our shape)
    "parameters": [
        {
            "name": "q",
            "in": "query",
            "required": True,
            "description": "words of a feature's label, or its index (123 or #123)",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": FEATURE_FILES.max_query_chars,
            },
        },
        {
            "name": "sae",
            "in": "query",
            "required": False,
            "description": "the SAE, as this server offers it (default: the first)",
            "schema": {"type": "string"},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"most results (default {SEARCH_LIMIT})",
            "schema": {"type": "integer", "minimum": 1, "maximum": FEATURE_FILES.max_results},
        },
    ]
}


def add_label_routes(
    router: APIRouter, service: Service, visitors: Visitors, workers: Workers
) -> None:
    """``GET /v1/features/search?q=...&sae=...&limit=...``: features ranked by how well their
    labels match ``q`` (words; or an index, ``123`` or ``#123``, which comes first), from the
    SAE offered as ``sae`` (default: the first). Answers ``{"object": "list", "sae", "query",
    "data": [{"index", "label", "score", "match"}]}``; a missing, empty or too long ``q``, a
    ``limit`` outside 1..200 or an unknown parameter is a 400 naming it."""

    @router.get("/v1/features/search", openapi_extra=SEARCH_QUERY)
    async def search(request: Request) -> dict[str, Any]:
        visitor = visitors.identify(request)
        ticket = visitors.admit(visitor)
        try:
            params = _search_params(request)
            return await workers.run(lambda: _search(service, *params))
        finally:
            ticket.release()


def _search_params(request: Request) -> tuple[str, str | None, int]:
    """(q, sae, limit) from the query string, checked; ``ApiError`` 400 naming a bad one."""
    query = request.query_params
    for name in query:
        if name not in SEARCH_PARAMS:
            message = f"unknown parameter {shown(name)}; this route takes {list(SEARCH_PARAMS)}"
            raise ApiError(400, message, param=name, code="unknown_parameter")
    for name in SEARCH_PARAMS:
        if len(query.getlist(name)) > 1:
            raise ApiError(400, f"{name} is given more than once", param=name, code="invalid_value")
    limit_text = query.get("limit")
    limit = SEARCH_LIMIT
    if limit_text is not None:
        if not limit_text.strip().isdecimal() or len(limit_text) > 6:
            message = f"limit: {shown(limit_text)} is not a whole number"
            raise ApiError(400, message, param="limit", code="invalid_value")
        limit = int(limit_text)
    return query.get("q", ""), query.get("sae"), limit


def _search(service: Service, q: str, ref: str | None, limit: int) -> dict[str, Any]:
    try:
        check_query(q, limit)
        name, sae = service.offered_sae(ref)
        found = search_labels(sae, q, limit)
    except SteeringError as e:
        code = "limit_exceeded" if isinstance(e, LimitError) else "invalid_value"
        raise ApiError(400, str(e), param=e.param or "q", code=code) from e
    rows = [{"index": m.index, "label": m.label, "score": m.score, "match": m.match} for m in found]
    return {"object": "list", "sae": name, "query": q, "data": rows}


# ---- search by contrast, and decoder neighbours ----


class ContrastRequest(BaseModel):
    """The body of ``POST /v1/features/contrast``. Any other field is refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompts: list[str] = Field(min_length=1)
    """Set A: user messages, each rendered with the chat template (at most
    max_contrast_prompts in the sets sent, the built-in baseline not counted;
    max_contrast_prompt_chars characters each). A repeated prompt counts once; each set
    needs at least 2 distinct prompts for an effect size."""
    against: list[str] | None = None
    """Set B; null or left out: the server's neutral baseline of everyday prompts."""
    sae: str | None = Field(None, max_length=300)
    """One of this server's SAEs, by its public reference (default: the first)."""
    top: int = 20
    """How many features to list (1..max_contrast_results)."""
    by: Literal["difference", "effect_size"] = "difference"
    """Rank by the difference of the means (default) or by Cohen's d."""


CONTRAST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ContrastRequest.model_json_schema()}},
    }
}
NEIGHBOURS_QUERY = ("sae", "feature", "top")
NEIGHBOURS_PARAMETERS = {
    "parameters": [
        {"name": "feature", "in": "query", "required": True, "schema": {"type": "integer"}},
        {"name": "top", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "sae", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
}


def add_contrast_routes(
    router: APIRouter, service: Service, visitors: Visitors, workers: Workers
) -> None:
    """``POST /v1/features/contrast`` and ``GET /v1/features/neighbours``."""

    @router.post("/v1/features/contrast", openapi_extra=CONTRAST_BODY)
    async def features_contrast(request: Request) -> Any:
        """The features that fire more on ``prompts`` than on ``against`` (or the neutral
        baseline), each prompt run on the unsteered model between two decode steps."""
        visitor = visitors.identify(request)
        require_json(request)
        ticket = visitors.admit(visitor)
        try:
            raw = await read_body(request, service.limits.max_body_bytes)
            return await _unless_client_leaves(request, _contrast(service, workers, raw, ticket))
        finally:
            ticket.release()

    @router.get("/v1/features/neighbours", openapi_extra=NEIGHBOURS_PARAMETERS)
    async def features_neighbours(request: Request) -> Any:
        """The features whose decoder directions are closest (by cosine) to a feature's."""
        visitor = visitors.identify(request)
        ticket = visitors.admit(visitor)
        try:
            query = request.query_params
            for name in query:
                if name not in NEIGHBOURS_QUERY:
                    message = f"{shown(name)}: unrecognized query parameter; use sae, feature, top"
                    raise ApiError(400, message, param=name, code="unrecognized_argument")
            feature = _query_int(query.get("feature"), "feature")
            top = _query_int(query.get("top", "10"), "top")
            most = service.limits.max_neighbours
            if not 1 <= top <= most:
                message = f"top: {top} must be an integer in 1..{most} (max_neighbours)"
                raise ApiError(400, message, param="top", code="invalid_value")

            def work() -> dict[str, Any]:
                try:
                    ref, sae = service.offered_sae(query.get("sae"))
                    found = cached_neighbours(sae, feature, top)
                except Exception as e:
                    raise _as_api_error(e) from e
                return {
                    "object": "list",
                    "sae": ref,
                    "feature": feature,
                    "label": sae.labels.get(feature),
                    "data": [neighbour_json(n) for n in found],
                }

            return await workers.run(work)
        finally:
            ticket.release()


def _query_int(text: str | None, name: str) -> int:
    """A query parameter as an integer, or a 400 naming it."""
    if text is None:
        raise ApiError(400, f"{name}: required (an integer)", param=name, code="invalid_value")
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        message = f"{name}: {shown(text)} is not an integer"
        raise ApiError(400, message, param=name, code="invalid_value")
    return int(stripped)


def parse_contrast_request(data: Any) -> ContrastRequest:
    """The body as a ``ContrastRequest``, or a 400 naming the bad field."""
    data = _json_object(data)
    try:
        return ContrastRequest.model_validate(
            {k: v for k, v in data.items() if v is not None}  # null means the default
        )
    except ValidationError as e:
        raise _validation_error(e) from None


async def _contrast(service: Service, workers: Workers, raw: bytes, ticket: Any) -> dict[str, Any]:
    """The answer of ``POST /v1/features/contrast``: checked and tokenized in a worker thread;
    each prompt run by the backend between two decode steps (awaited on the event loop,
    holding no thread); ranked in a worker thread."""

    def prepare() -> tuple[ContrastRequest, str, Any, list[Any], int, int]:
        body = parse_contrast_request(parse_json(raw))
        against = body.against if body.against is not None else list(neutral_prompts(service.model))
        try:
            neutral = body.against is None
            check_sets(body.prompts, against, body.top, service.limits, baseline=neutral)
            ref, sae = service.offered_sae(body.sae)
            rendered, n_a = distinct_rendered(service.model, body.prompts, against, service.limits)
        except Exception as e:
            raise _as_api_error(e) from e
        return body, ref, sae, rendered, n_a, len(body.prompts) + len(against) - len(rendered)

    body, ref, sae, rendered, n_a, dropped = await workers.run(prepare)
    means = torch.empty(len(rendered), sae.d_sae, dtype=torch.float32)
    for i, prompt in enumerate(rendered):
        job = partial(prompt_means, service.model, sae, prompt)
        means[i] = await _on_backend(service, job)
        ticket.tokens += len(prompt.token_ids)

    def answer() -> dict[str, Any]:
        found = rank_contrast(means[:n_a], means[n_a:], body.top, sae.labels, body.by)
        return {
            "object": "list",
            "sae": ref,
            "by": body.by,
            "prompts": n_a,
            "against": len(rendered) - n_a,
            "neutral": body.against is None,
            "duplicates": dropped,
            "data": [contrast_json(f) for f in found],
        }

    return await workers.run(answer)


async def _on_backend(service: Service, job: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``job`` run by the backend between two decode steps, within ``max_stall_seconds``."""
    try:
        future = service.backend.run(job)
    except Exception as e:
        raise _as_api_error(e) from e
    try:
        return await asyncio.wait_for(
            asyncio.wrap_future(future), timeout=service.limits.max_stall_seconds
        )
    except TimeoutError:
        busy = Busy(f"the engine did not get to it within {service.limits.max_stall_seconds:g} s")
        raise _as_api_error(busy) from None
