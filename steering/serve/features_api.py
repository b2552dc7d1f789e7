"""The API of the researcher's loop: search an SAE's features by label, by contrast between
two prompt sets, and by decoder neighbours (``steering.features``).

``build_features_router`` is included before the chat router, whose ``/v1/{path}`` catch-all
answers every other ``/v1`` URL.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..errors import LimitError, SteeringError
from ..features.labels import check_query, search_labels
from ..limits import FEATURE_FILES
from .api_errors import ApiError, shown
from .openai_api import ApiRoute
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


def add_contrast_routes(
    router: APIRouter, service: Service, visitors: Visitors, workers: Workers
) -> None:
    """``POST /v1/features/contrast`` and ``GET /v1/features/neighbours``."""
