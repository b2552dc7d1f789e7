"""Reading a request body with bounds before any work.

Order: the media type (``application/json`` only: 415, so a web page cannot make a visitor's
browser post a "simple" cross-site form or text request), the size (413, from
``Content-Length`` before reading, else while reading), a bounded time to receive it (408),
then, in a worker thread, the nesting depth on the raw text (before the parser recurses:
``steering.presets.schema.json_depth``), the JSON itself, and lone surrogates (``"\\ud800"``
is not text: nothing downstream could encode it). Every refusal is an ``ApiError`` in OpenAI's
shape.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
from fastapi import Request

from ..limits import PRESET_FILE
from ..presets.schema import json_depth
from .api_errors import ApiError

# The body nests the preset format one level down (its ``steering`` field); chat messages nest
# 5 deep with content parts. Deeper input is refused before the JSON parser recurses into it.
MAX_BODY_DEPTH = 1 + PRESET_FILE.max_json_depth
BODY_SECONDS = 30.0  # the most a client may take to send its body
MAX_INT_DIGITS = 20  # a seed is 64 bits; longer integers cost the parser time and fit nothing
_SURROGATE = re.compile("[\ud800-\udfff]")


def require_json(request: Request) -> None:
    """Refuse (415) a body that is not declared ``application/json`` (UTF-8)."""
    media, _, params = request.headers.get("content-type", "").partition(";")
    charset = params.strip().lower().removeprefix("charset=").strip('"')
    if media.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise ApiError(
            415,
            "the body must be JSON, sent with Content-Type: application/json (UTF-8)",
            code="unsupported_media_type",
        )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, at most ``max_bytes`` (413 beyond, refused from ``Content-Length`` before
    reading anything), received within ``BODY_SECONDS`` (408 otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise _too_large(declared if declared.isdigit() else None, max_bytes)
    chunks, size = [], 0
    try:
        with anyio.fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(None, max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        message = f"the body did not arrive within {BODY_SECONDS:g} s"
        raise ApiError(408, message, code="request_timeout") from None
    return b"".join(chunks)


def _too_large(declared: str | None, max_bytes: int) -> ApiError:
    size = f"of {int(declared)} bytes " if declared else ""
    message = f"the request body {size}is over this server's limit of {max_bytes} bytes"
    return ApiError(413, message + " (max_body_bytes)", code="request_too_large")


def parse_json(raw: bytes, max_depth: int = MAX_BODY_DEPTH) -> Any:
    """The JSON value of ``raw``: UTF-8, nested at most ``max_depth`` deep, finite numbers,
    integers of at most ``MAX_INT_DIGITS`` digits, no lone surrogates. Raises ``ApiError``
    (400, ``invalid_json``, or ``invalid_value`` naming where a lone surrogate is). CPU work:
    call it off the event loop."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"the body is not UTF-8 (byte {e.start})"
        raise ApiError(400, message, code="invalid_json") from None
    # Depth is at most the number of brackets: count those in C before walking the text.
    if text.count("[") + text.count("{") > max_depth:
        depth = json_depth(text)
        if depth > max_depth:
            message = f"the body's JSON is nested {depth} deep, at most {max_depth}"
            raise ApiError(400, message, code="invalid_json")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_short_int)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    where = _surrogate_at(data, ())
    if where is not None:
        param = ".".join(where) or None
        message = (
            f"{param or 'the body'}: contains a lone surrogate escape (\\ud800-\\udfff), which "
            "is not text; send characters as UTF-8 or as surrogate pairs"
        )
        raise ApiError(400, message, param=param, code="invalid_value")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits, at most {MAX_INT_DIGITS}")
    return int(text)


def _surrogate_at(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The path of the first string (or key) holding a lone surrogate; None if there is none.
    Recursion is bounded by the depth checked before parsing."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return path  # the key itself cannot be shown
            found = _surrogate_at(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate_at(item, (*path, str(i)))
            if found is not None:
                return found
    return None
