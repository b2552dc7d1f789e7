"""The page's door: an ASGI wrapper in front of the mounted Gradio app.

``gr.mount_gradio_app`` serves every route Gradio has: a development reload stream, uploads of
any file, files by path, a reverse proxy, run history, screen recording, REST calls by name.
The page uses a handful. ``PageGuard`` answers 404 for every other route, drops the query
string where Gradio reads parameters the page never sets (``?page=``, ``?deep_link=``), bounds
every request body, and refuses event data that holds JSON objects: the page's inputs are
text, numbers and choices, and an object is how a client names a server file to Gradio.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from steering.serve import Limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JOIN = "/gradio_api/queue/join"
SMALL_BODY_BYTES = 64 * 1024  # every request but an event's: cancels, heartbeats
PARSE_IN_THREAD_BYTES = 64 * 1024  # larger bodies are parsed off the event loop
ROUTES: dict[str, re.Pattern[str]] = {
    # the page itself and its static files
    "GET": re.compile(
        r"/|/config|/theme\.css|/favicon\.ico|/robots\.txt"
        r"|/(assets|static)/[\w./-]+"
        # the event queue, the session heartbeat, and what the page polls after a lost
        # connection (app_id); info describes the page's public events for gradio_client
        r"|/gradio_api/(queue/data|heartbeat/[\w-]+|app_id|info)"
    ),
    "POST": re.compile(r"/gradio_api/(queue/join|cancel)"),
}
ROUTES["HEAD"] = ROUTES["GET"]
KEEP_QUERY = {"/gradio_api/queue/data", JOIN}  # the session hash; the page's own URL


def max_event_bytes(limits: Limits) -> int:
    """The largest event body: a message or a preset's text, each character JSON-escaped at
    worst to six bytes, and the event's other fields."""
    return 6 * max(limits.max_message_chars, limits.max_upload_bytes) + SMALL_BODY_BYTES


class PageGuard:
    """Wraps the mounted Gradio app: only the page's routes answer, with bounded bodies.

    ``max_event_bytes`` bounds the body of an event (``queue/join``), which carries a message
    or a preset's text; every other body is bounded by ``SMALL_BODY_BYTES``.
    """

    def __init__(
        self, app: ASGIApp, *, max_event_bytes: int, browser_only: frozenset[int] = frozenset()
    ) -> None:
        self.app = app
        self.max_event_bytes = max_event_bytes
        self.browser_only = browser_only  # events with nothing to run on the server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the page uses no websockets
            await send({"type": "websocket.close", "code": 1008})
            return
        path = route_path(scope)
        route = ROUTES.get(scope["method"])
        if route is None or not route.fullmatch(path):
            await respond(send, 404, "Not Found")
            return
        if path not in KEEP_QUERY:
            scope = {**scope, "query_string": b""}
        limit = self.max_event_bytes if path == JOIN else SMALL_BODY_BYTES
        body = await read_body(receive, limit, declared_length(scope))
        if body is None:
            await respond(send, 413, f"request body over {limit} bytes")
            return
        if path == JOIN:
            problem = await event_problem(body, self.browser_only)
            if problem:
                await respond(send, 400, problem)
                return
        await self.app(scope, replay(body, receive), send)


def route_path(scope: Scope) -> str:
    """The path inside the mount."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes | None:
    """The whole body, or None as soon as it is known to be over ``limit`` bytes."""
    if declared is not None and declared > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits as usual."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def event_problem(body: bytes, browser_only: frozenset[int] = frozenset()) -> str | None:
    """Why an event's body is refused, or None: it names no browser-only event (those have
    nothing to run on the server) and its data holds no JSON object. (Events that ``gr.render``
    adds per session are not known in advance: Gradio checks those itself.)"""
    try:
        if len(body) > PARSE_IN_THREAD_BYTES:
            payload = await anyio.to_thread.run_sync(json.loads, body)
        else:
            payload = json.loads(body)
    except (ValueError, RecursionError):
        return "the event is not valid JSON"
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return "the event has no data list"
    if payload.get("fn_index") in browser_only:
        return "the page has no such event on the server"
    if holds_object(data):
        return "the page's events take text, numbers and choices only, never objects or files"
    return None


def browser_only_events(fns: dict[int, Any]) -> frozenset[int]:
    """The ``fn_index`` of every event of a ``gr.Blocks`` that runs only in the browser."""
    return frozenset(index for index, block_fn in fns.items() if block_fn.fn is None)


def holds_object(value: Any) -> bool:
    """Whether a JSON value holds an object (a dict) at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


async def respond(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
