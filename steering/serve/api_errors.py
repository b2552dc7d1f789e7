"""Answers in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

Every answer the API gives a visitor about a problem goes through ``ApiError``: it cuts what it
echoes (a value in a message, a field name) to about 100 characters, never holds text that
cannot be encoded, and ``ApiRoute`` turns an unexpected exception into a 500 in the same shape
with no internals, so even a bug never shows a traceback.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse

ECHO_CHARS = 100  # the most of a visitor's value an error message repeats
MESSAGE_CHARS = 2000  # the most an error message says (a preset's problems, one a line)


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut to about ``ECHO_CHARS`` characters."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with any lone surrogate replaced (so it encodes)."""
    text = text if len(text) <= limit else f"{text[:limit]}... (cut)"
    return text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes "?"


class ApiError(Exception):
    """An answer in OpenAI's error shape, with its HTTP status (and headers, e.g.
    ``Retry-After``). ``kind`` is OpenAI's ``type``; by default ``invalid_request_error``
    below 500 and ``server_error`` from 500."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        param = None if self.param is None else clip(self.param)
        message = clip(self.message, MESSAGE_CHARS)
        return {"message": message, "type": self.kind, "param": param, "code": self.code}

    def response(self) -> JSONResponse:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds`` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


INTERNAL_ERROR = ApiError(
    500,
    "the server failed on this request (the error was logged); other requests were not affected",
    code="internal_error",
)
