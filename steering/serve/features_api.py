"""The API of the researcher's loop: search an SAE's features by label, by contrast between
two prompt sets, and by decoder neighbours (``steering.features``).

``build_features_router`` is included before the chat router, whose ``/v1/{path}`` catch-all
answers every other ``/v1`` URL.
"""

from __future__ import annotations

from fastapi import APIRouter

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


def add_label_routes(
    router: APIRouter, service: Service, visitors: Visitors, workers: Workers
) -> None:
    """``GET /v1/features/search``: features ranked by how well their labels match a query."""


# ---- search by contrast, and decoder neighbours ----


def add_contrast_routes(
    router: APIRouter, service: Service, visitors: Visitors, workers: Workers
) -> None:
    """``POST /v1/features/contrast`` and ``GET /v1/features/neighbours``."""
