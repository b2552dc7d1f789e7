"""The page under abuse by an anonymous visitor, through Gradio's raw queue API (what any HTTP
client can call: every event, the private ones too), not only through the browser.

Each server here keeps Gradio's files in its own GRADIO_TEMP_DIR, so the tests can count what
the page ever wrote there.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from live_server import start_server, tiny_service

from steering.limits import Limits

FILE = {"meta": {"_type": "gradio.FileData"}, "orig_name": "preset.json"}
SECRET = "do-not-echo-7f3a"


class Page:
    """The page's events by raw HTTP: ``POST /gradio_api/queue/join``, then the session's
    server-sent events from ``GET /gradio_api/queue/data``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)
        config = self.http.get("/config").json()
        self.events = config["dependencies"]
        self.components = {c["id"]: c for c in config["components"]}

    def fn(self, name: str) -> dict:
        return next(e for e in self.events if e.get("api_name") == name)

    def inputs(self, event: dict) -> list[str]:
        return [self.components[i]["type"] for i in event["inputs"]]

    def join(self, event: dict, data: list, session: str, query: str = "") -> httpx.Response:
        trigger = event["targets"][0][0] if event["targets"] else None
        body = {"data": data, "fn_index": event["id"], "trigger_id": trigger}
        return self.http.post(
            f"/gradio_api/queue/join{query}", json={**body, "session_hash": session}
        )

    def run(self, name: str, data: list, session: str | None = None, query: str = "") -> list[dict]:
        """One event to its end: its messages (estimation, ..., process_completed)."""
        session = session or uuid.uuid4().hex[:12]
        joined = self.join(self.fn(name), data, session, query)
        assert joined.status_code == 200, joined.text
        return self.read(session, joined.json()["event_id"])

    def read(self, session: str, event_id: str, limit_s: float = 20) -> list[dict]:
        messages: list[dict] = []
        deadline = time.monotonic() + limit_s
        params = {"session_hash": session}
        with self.http.stream("GET", "/gradio_api/queue/data", params=params) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("event_id") == event_id:
                        messages.append(message)
                        if message.get("msg") == "process_completed":
                            return messages
                if time.monotonic() > deadline:
                    break
        return messages

    def healthz_s(self) -> float:
        """Seconds /healthz took (it must answer, and 200, within 2 s)."""
        started = time.monotonic()
        assert self.http.get("/healthz", timeout=2).status_code == 200
        return time.monotonic() - started


def final(messages: list[dict]) -> list:
    return messages[-1]["output"]["data"]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gradio-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("page-security")))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def page(server):
    return Page(server.url)


def outside_json(tmp_path: Path) -> str:
    secret = tmp_path / "server-secret.json"
    secret.write_text(json.dumps({SECRET: SECRET}))
    return str(secret)


@pytest.mark.parametrize("target", ["/etc/passwd", "outside.json", "/dev/zero"])
def test_no_event_input_reads_a_server_file(page, cache, tmp_path, target):
    """Every event (private ones too), every input, as a file object or a chat history with a
    file block: the named file is never read, echoed or cached, and the server stays up."""
    path = outside_json(tmp_path) if target == "outside.json" else target
    named = {"path": path, **FILE}
    shapes = [named, [{"role": "user", "content": [{"type": "file", "file": named}]}]]
    before = files_in(cache)
    private = [e for e in page.events if e.get("api_visibility") == "private"]
    assert private  # the private events are part of what is tried
    for event in page.events:
        for position in range(len(event["inputs"]) or 1):
            for shape in shapes:
                data = [None] * len(event["inputs"]) or [None]
                data[position] = shape
                session = uuid.uuid4().hex[:12]
                joined = page.join(event, data, session)
                told = joined.text
                if joined.status_code == 200:
                    told = json.dumps(page.read(session, joined.json()["event_id"], limit_s=5))
                else:
                    assert 400 <= joined.status_code < 500, joined.text
                assert SECRET not in told and "root:" not in told, (event["api_name"], told)
                assert page.healthz_s() < 2
                assert files_in(cache) == before, (event["api_name"], position)


def test_behind_the_guard_gradio_still_refuses_files_not_uploaded(cache, tmp_path):
    """Defence in depth: without ``ui.guard`` in front, Gradio's own check (on only for a
    launched app, so the mount has to switch it on) refuses a file no one uploaded."""
    live = start_server(tiny_service(tmp_path))
    try:
        mount = live.server.config.app.routes[-1]
        if type(mount.app).__name__ == "PageGuard":
            mount.app = mount.app.app
        page = Page(live.url)
        before = files_in(cache)
        respond = page.fn("respond")
        for path in ("/etc/passwd", outside_json(tmp_path)):
            data = [{"path": path, **FILE}] + [None] * (len(respond["inputs"]) - 1)
            messages = page.run("respond", data)
            told = json.dumps(messages)
            assert messages[-1]["success"] is False and "root:" not in told and SECRET not in told
            assert files_in(cache) == before
    finally:
        live.stop()


def test_no_event_takes_a_chat_history_from_the_client(page):
    """The chat panes are outputs only: the server keeps each session's conversation."""
    for event in page.events:
        assert "chatbot" not in page.inputs(event), event["api_name"]
    session = uuid.uuid4().hex[:12]
    sampling = [0, 1.0, 4, 0]
    first = final(page.run("respond", ["hello", None, None, *sampling], session))
    second = final(page.run("respond", ["how are you", None, None, *sampling], session))
    steered = [m["role"] for m in second[2]]
    assert steered == ["user", "assistant"] * 2 and second[2][:2] == first[2]
    again = final(page.run("regenerate", [None, None, *sampling], session))
    assert [m["content"][0]["text"] for m in again[1] if m["role"] == "user"] == [
        "hello",
        "how are you",
    ]
    cleared = final(page.run("clear", [], session))
    assert cleared[2] == [] and cleared[3] == []
    alone = final(page.run("respond", ["hi", None, None, *sampling], session))
    assert [m["role"] for m in alone[2]] == ["user", "assistant"]


def test_upload_and_file_routes_store_nothing_and_exit_leaves_no_file(cache, tmp_path):
    """Uploads, downloads, share links and slider events, N times each: Gradio's cache folder
    gets no file, and after shutdown none is left."""
    live = start_server(tiny_service(tmp_path))
    try:
        page = Page(live.url)
        before = files_in(cache)
        for name in ("preset.json", "tool.exe"):
            sent = page.http.post("/gradio_api/upload", files={"files": (name, b"{}" * 100)})
            assert sent.status_code == 404, sent.text
        golden = final(page.run("exports_1", [None]))[0]  # the default preset's file text
        code = final(page.run("exports_1", [None]))[1]
        for _ in range(5):
            loaded = final(page.run("upload", ["mine.json", len(golden), golden, None, None]))
            assert loaded[2].startswith("Preset file loaded")
            assert final(page.run("exports", [None]))[0] == golden
            shared = final(page.run("load", ["", "", "", None], query=f"?steering={code}"))
            assert shared[2].startswith("Steering from the share link")
            picked = final(page.run("pick_preset", ["Golden Gate Bridge", None]))
            assert picked[2] == "Preset **Golden Gate Bridge** loaded."
        assert files_in(cache) == before
    finally:
        live.stop()
    assert files_in(cache) == before


def test_a_long_message_gets_a_notice_before_any_work(page, server, monkeypatch):
    submitted = []
    monkeypatch.setattr(server.service, "submit", lambda *a, **k: submitted.append(a))
    most = server.service.limits.max_message_chars
    session = uuid.uuid4().hex[:12]
    out = final(page.run("respond", ["x" * (most + 123), None, None, 0, 1, 4, 0], session))
    notice = out[4]
    assert f"{most + 123:,} characters, 123 over this demo's limit of {most:,}" in notice
    assert "max_message_chars" in notice and submitted == []
    assert out[0] == {"__type__": "update"}  # the box keeps the message: nothing was sent


def test_a_long_conversation_is_refused_with_how_much_it_is_over():
    from ui.conversation import message_problem

    limits = Limits(max_message_chars=10, max_conversation_chars=30)
    history = {"steered": [{"role": "user", "content": "a" * 25}], "baseline": []}
    assert message_problem("b" * 10, {"steered": [], "baseline": []}, limits) is None
    over = message_problem("b" * 10, history, limits)
    assert over and "35 characters, 5 over this demo's limit of 30" in over and "Clear" in over


def test_an_event_body_over_the_bound_is_refused_at_once(page, server):
    """Four concurrent oversized messages: 413 before anything is parsed; /healthz answers."""
    from ui.guard import max_event_bytes

    size = max_event_bytes(server.service.limits) + 1
    body = json.dumps({"data": ["x" * size], "fn_index": page.fn("respond")["id"]})
    answers: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=page.url, timeout=30) as http:
            post = http.post("/gradio_api/queue/join", content=body, headers=JSON)
            answers.append(post.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert page.healthz_s() < 2
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [413] * 4


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "query",
    ["?page=anything", "?page=../../etc", "?deep_link=../x&page=y"],
)
def test_any_query_string_is_harmless(page, query):
    for path in ("/", "/config"):
        answer = page.http.get(path + query)
        assert answer.status_code == 200, (path, query, answer.text[:200])


def shown(outputs: list) -> str:
    """The message the page shows about a share link (whichever output carries it)."""
    return next(x for x in outputs if isinstance(x, str) and "share link" in x)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


GARBAGE_LINKS = {
    "not base64": "!!!not-base64!!!",
    "cut short": "abcde",
    "base64 of bytes": _b64(b"\xff\xfe\x00garbage"),
    "base64 of text": _b64(b"not json at all"),
    "long": "A" * 12_000,
}
RAW_WORDS = ["padding", "Invalid base64", "Expecting value", "codec", "line 1 column", "char 0"]


@pytest.mark.parametrize("code", GARBAGE_LINKS.values(), ids=GARBAGE_LINKS.keys())
def test_garbage_share_links_get_a_friendly_message(page, code):
    assert page.http.get(f"/?steering={code}").status_code == 200
    messages = page.run("load", ["", "", "", None], query=f"?steering={code}")
    assert messages[-1]["success"] is True
    status = shown(final(messages))
    assert status.startswith("**The share link's steering cannot be used:**")
    assert not any(word in status for word in RAW_WORDS), status
    assert len(status) < 2_000


def test_a_share_code_longer_than_any_preset_is_refused_by_length(page, server):
    from ui.features import share_code_chars

    most = share_code_chars(server.service.limits)
    status = final(page.run("load", ["A" * (most + 1), "", "reloaded", None]))[2]
    assert f"{most + 1:,} characters; a share link's code has at most {most:,}" in status


def test_a_preset_that_breaks_the_rules_says_which_within_bounds(page):
    """A link's preset problems are listed, at most 8, in a code block its text cannot close."""
    extra = {"a````b": 1, **{f"extra{i}": 1 for i in range(12)}}
    preset = {"format_version": 1, "name": "x", "model": {"id": "tiny-llama"}, **extra}
    code = _b64(json.dumps(preset).encode())
    status = shown(final(page.run("load", ["", "", "", None], query=f"?steering={code}")))
    lead, block = status.split("\n\n", 1)
    fence = block.split("\n", 1)[0]
    assert lead == "**The share link's steering cannot be used:**" and fence == "`" * 5
    assert block.endswith("\n" + fence) and block.count(fence) == 2
    listed = block.split("\n")[1:-1]
    assert listed[:2] == ["saes: Field required", "edits: Field required"]
    assert len(listed) == 9 and listed[-1] == "... and 9 more"  # 17 problems in all


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/monitoring"),
        ("GET", "/gradio_api/file=/etc/passwd"),
        ("GET", "/gradio_api/proxy=https://example.hf.space/x"),
        ("GET", "/gradio_api/openapi.json"),
        ("GET", "/gradio_api/startup-events"),
        ("GET", "/gradio_api/call/respond/x"),
        ("POST", "/gradio_api/upload"),
        ("POST", "/gradio_api/call/respond"),
        ("POST", "/gradio_api/run/respond"),
        ("POST", "/gradio_api/component_server"),
        ("POST", "/gradio_api/process_recording"),
        ("POST", "/gradio_api/vibe-edit"),
    ],
)
def test_only_the_pages_routes_answer(page, method, path):
    with page.http.stream(method, path, timeout=5) as answer:
        assert answer.status_code == 404, (method, path)


def test_the_reload_route_404s_and_the_page_still_loads(page):
    with page.http.stream("GET", "/gradio_api/dev/reload", timeout=5) as answer:
        assert answer.status_code == 404
    for path in ("/", "/config", "/theme.css", "/gradio_api/info", "/healthz", "/v1/models"):
        assert page.http.get(path).status_code == 200, path


def test_events_that_run_only_in_the_browser_are_refused(page):
    browser_only = [e for e in page.events if not e.get("backend_fn")]
    assert browser_only  # share and download run in the browser
    for event in browser_only:
        answer = page.join(event, [], uuid.uuid4().hex[:12])
        assert answer.status_code == 400 and "no such event" in answer.json()["detail"]


def test_every_error_the_page_shows_is_phrased_for_a_visitor_without_paths():
    from steering.errors import PresetError, PromptTooLong
    from ui.messages import for_visitor, plural, without_paths

    error = PresetError(["saes.0.ref: '/srv/models/sae' is a local path; use demo-sae"])
    shown = for_visitor(error)
    assert "/srv" not in shown and "(a file path) is a local path" in shown
    for path in ("/home/me/sae", "../sae", "./x/y", "~/sae", "C:\\models\\sae"):
        assert without_paths(f"cannot read {path} here") == "cannot read (a file path) here"
    assert without_paths("3/4 of prompt and/or reply") == "3/4 of prompt and/or reply"
    too_long = PromptTooLong(
        "the prompt has 140 tokens, but the model's context is 128 tokens (prompt and reply "
        "together): shorten the chat"
    )
    assert for_visitor(too_long).startswith(
        "This conversation is 140 tokens; the model reads 128 (prompt and reply together)."
    )
    assert "2,048 (max_prompt_tokens)" in for_visitor(
        PromptTooLong("the prompt has 3000 tokens, at most 2048")
    )
    assert [plural(n, "feature") for n in (0, 1, 2)] == ["0 features", "1 feature", "2 features"]
