"""The API and the generation loop under abuse by anonymous visitors over loopback.

Visitors are told apart by their client address: each test sends from its own loopback
address (127.0.0.x: the whole 127/8 network is loopback on Linux), so per-visitor limits of one
test never touch another's. Floods are bounded in count and time.
"""

from __future__ import annotations

import gc
import json
import queue
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from live_server import PRESET_NAME, golden_gate_preset, start_server, tiny_service
from test_engine import make_engine, make_request

from steering.errors import Busy
from steering.limits import Limits
from steering.loop import EngineLoop
from steering.requests import Request
from steering.sampling import SamplingParams
from steering.serve.api_errors import ApiError
from steering.serve.visitors import Access, Visitors, client_address, visitor_key

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "hello how are you"}]
SHARED = Limits(max_new_tokens=200, max_requests_per_minute=1000)
WORST = {  # the most work one request may ask of the shared server
    "model": MODEL,
    "messages": [{"role": "user", "content": "hello " * 50}],
    "max_tokens": 200,
    "min_tokens": 200,
    "compare": True,
    "temperature": 1.0,
}


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **fields}


def at(server, address: str, timeout: float = 60) -> httpx.Client:
    """A client that connects from ``address``: a visitor of its own."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, timeout=timeout)


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def assert_openai_error(answer: httpx.Response, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.text[:300]
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


class Gate:
    """Holds the engine thread before each decode step until opened (at most 30 s)."""

    def __init__(self, loop: EngineLoop) -> None:
        self.open_ = threading.Event()
        engine, real = loop.engine, loop.engine.step

        def step():
            self.open_.wait(30)
            return real()

        engine.step = step

    def open(self) -> None:
        self.open_.set()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("abuse"), SHARED), page=False)
    yield live
    live.stop()


@pytest.fixture
def own_server(tmp_path):
    """Start a server of the test's own (``own_server(limits, **create_app_options)``)."""
    started = []

    def start(limits: Limits = SHARED, **options):
        live = start_server(tiny_service(tmp_path, limits), page=False, **options)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


# ---- 1. no request handler waits without bound; /healthz tells the truth ----


def threads_blocked_on_handles() -> int:
    """Threads blocked reading a generation handle's events (a queue a ``Handle`` holds)."""
    blocked = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is queue.Queue.get.__code__:
                events = frame.f_locals["self"]
                holders = gc.get_referrers(events)
                blocked += any(_holds(h, events) for h in holders)
                break
            frame = frame.f_back
    return blocked


def _holds(holder, events) -> bool:
    """Whether ``holder`` is an object (or an object's attribute dict) whose ``events`` it is."""
    if isinstance(holder, dict):
        return holder.get("events") is events
    return getattr(holder, "events", None) is events


def test_twenty_streams_dropped_while_queued_leave_nothing_behind(own_server):
    live = own_server(Limits(max_batch=2, max_requests_per_minute=1000))
    loop = live.service.backend
    gate = Gate(loop)
    try:
        sampling = SamplingParams(max_new_tokens=50)
        busy = live.service.submit(HELLO, None, sampling, compare=True)  # the batch's 2 rows
        wait_until(lambda: loop.health()["running_rows"] == 2, 10, "the batch is full")
        clients = [at(live, f"127.0.1.{i}") for i in range(1, 21)]
        streams = []
        for client in clients:
            request = client.build_request("POST", "/v1/chat/completions", json=chat(stream=True))
            stream = client.send(request, stream=True)
            lines = stream.iter_lines()  # kept: dropping it would close the connection
            assert stream.status_code == 200 and '"role": "assistant"' in next(lines)
            streams.append((stream, lines))
        assert loop.health()["waiting"] == 20
        assert threads_blocked_on_handles() == 0  # waiting streams hold no thread
        for (stream, _), client in zip(streams, clients):
            stream.close()
            client.close()
        wait_until(lambda: loop.health()["waiting"] == 0, 10, "the dropped streams left")
    finally:
        gate.open()
    busy.cancel()
    with at(live, "127.0.1.30", timeout=30) as client:
        answer = client.post("/v1/chat/completions", json=chat())
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
    assert threads_blocked_on_handles() == 0


def test_healthz_is_down_with_a_dead_engine(own_server):
    live = own_server()
    assert httpx.get(f"{live.url}/healthz").status_code == 200
    live.service.backend.close()
    answer = httpx.get(f"{live.url}/healthz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "down"
    assert answer.json()["problems"] == ["the engine has stopped"]
    refused = httpx.post(f"{live.url}/v1/chat/completions", json=chat())
    assert_openai_error(refused, 503, "server_busy")


def test_healthz_is_down_with_a_wedged_engine(own_server):
    live = own_server(Limits(max_stall_seconds=0.5))
    gate = Gate(live.service.backend)
    sampling = SamplingParams(temperature=0, max_new_tokens=4, min_new_tokens=4)
    handle = live.service.submit(HELLO, None, sampling)
    try:
        wait_until(lambda: live.service.health()["running_rows"] == 1, 10, "admitted")
        assert httpx.get(f"{live.url}/healthz").json()["status"] == "ok"

        def down():
            return httpx.get(f"{live.url}/healthz").status_code == 503

        wait_until(down, 10, "healthz says down")
        problems = httpx.get(f"{live.url}/healthz").json()["problems"]
        assert "the engine has made no progress" in problems[0]
        assert "(max_stall_seconds 0.5)" in problems[0]
    finally:
        gate.open()
    assert [e.finish_reason for e in handle if e.finish_reason] == ["length"]
    wait_until(lambda: httpx.get(f"{live.url}/healthz").status_code == 200, 10, "healthz ok")


def test_a_loop_that_breaks_ends_every_request_and_refuses_new_ones():
    engine = make_engine()
    loop = EngineLoop(engine)

    def broken(room):
        raise RuntimeError("a bug in the loop")

    loop._take_waiting = broken
    handle = loop.submit(make_request(engine, "hello", None, SamplingParams(max_new_tokens=4)))
    events = []
    reader = threading.Thread(target=lambda: events.extend(handle), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the request never ended"
    assert [e.finish_reason for e in events] == ["error"]
    assert loop.health()["engine_alive"] is False
    with pytest.raises(Busy, match="shutting down"):
        loop.submit(make_request(engine, "hello"))
    loop.close()


def test_an_abandoned_plain_request_is_cancelled_while_queued(own_server):
    live = own_server(Limits(max_batch=2, max_requests_per_minute=1000))
    loop = live.service.backend
    gate = Gate(loop)
    busy = live.service.submit(HELLO, None, SamplingParams(max_new_tokens=4), compare=True)
    try:
        wait_until(lambda: loop.health()["running_rows"] == 2, 10, "the batch is full")
        with at(live, "127.0.2.1", timeout=1.0) as client, pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=chat())  # the client gives up after 1 s
        wait_until(lambda: loop.health()["waiting"] == 0, 5, "the abandoned request left")
    finally:
        gate.open()
        busy.cancel()


# ---- 2. bounds before work ----


def test_a_huge_body_is_refused_before_it_is_read(server):
    with at(server, "127.0.3.1") as client:
        huge = json.dumps(chat(messages=[{"role": "user", "content": "hello " * 1_700_000}]))
        started = time.monotonic()
        answer = client.post(
            "/v1/chat/completions", content=huge, headers={"Content-Type": "application/json"}
        )
        seconds = time.monotonic() - started
        error = assert_openai_error(answer, 413, "request_too_large")
        assert "limit of 1048576 bytes (max_body_bytes)" in error["message"]
        assert seconds < 5  # refused from Content-Length, not tokenized (was 9-15 s)

        def chunks():  # no Content-Length: refused while reading
            for _ in range(40):
                yield b" " * 65536

        streamed = client.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_openai_error(streamed, 413, "request_too_large")


@pytest.mark.parametrize(
    "messages, param, words",
    [
        ([{"role": "user", "content": "hi"}] * 257, "messages", "257 messages, at most 256"),
        (
            [{"role": "user", "content": "hello " * 6000}],
            "messages.0.content",
            "36000 characters, at most 16384 (max_message_chars)",
        ),
        (
            [{"role": "user", "content": "hello " * 2500}] * 5,
            "messages",
            "75000 characters in all, at most 65536 (max_conversation_chars)",
        ),
    ],
)
def test_chats_over_the_limits_are_refused_before_tokenizing(server, messages, param, words):
    with at(server, "127.0.3.2") as client:
        answer = client.post("/v1/chat/completions", json=chat(messages=messages))
    error = assert_openai_error(answer, 400, "limit_exceeded")
    assert error["param"] == param and words in error["message"]


def test_slow_request_building_never_stalls_the_event_loop(server, monkeypatch):
    real = server.service.plan

    def slow_plan(steering):
        time.sleep(3)  # stands for a heavy steering or tokenizer
        return real(steering)

    monkeypatch.setattr(server.service, "plan", slow_plan)
    with ThreadPoolExecutor(1) as pool, at(server, "127.0.3.3") as client:
        slow = pool.submit(client.post, "/v1/chat/completions", json=chat())
        time.sleep(0.5)
        started = time.monotonic()
        health = httpx.get(f"{server.url}/healthz", timeout=10)
        seconds = time.monotonic() - started
        assert health.status_code == 200 and health.json()["request_threads_free"] == 3
        assert seconds < 1.5  # the 3 s of work ran on a worker thread
        assert slow.result().status_code == 200


# ---- 3. one visitor cannot take the engine ----


def test_a_flood_from_one_address_leaves_room_for_another_visitor(server):
    statuses: Counter = Counter()

    def flood(i: int) -> None:
        time.sleep(i * 0.01)  # 40 requests in 0.4 s
        with at(server, "127.0.4.1", timeout=120) as client:
            statuses[client.post("/v1/chat/completions", json=WORST).status_code] += 1

    with ThreadPoolExecutor(40) as pool:
        floods = [pool.submit(flood, i) for i in range(40)]
        time.sleep(2.2)
        with at(server, "127.0.4.2", timeout=60) as client:
            started, first = time.monotonic(), None
            body = chat(stream=True, max_tokens=16)
            with client.stream("POST", "/v1/chat/completions", json=body) as stream:
                assert stream.status_code == 200
                for line in stream.iter_lines():
                    if first is None and '"content": "' in line and '"content": ""' not in line:
                        first = time.monotonic() - started
        for f in floods:
            f.result(timeout=120)
    assert first is not None and first < 10  # admitted at once, not after the flood
    assert statuses[200] + statuses[429] == 40  # never a 503: the queue was not theirs
    assert statuses[429] >= 30  # max_in_flight 4 per visitor, whatever ended meanwhile


def test_the_loop_admits_waiting_visitors_in_fair_turns():
    engine = make_engine(limits=Limits(max_batch=1, max_waiting=64))
    order: list[str] = []
    real = engine.admit

    def admit(requests):
        order.extend(r.visitor or "anonymous" for r in requests)
        return real(requests)

    engine.admit = admit
    loop = EngineLoop(engine)
    sampling = SamplingParams(temperature=0, max_new_tokens=2, min_new_tokens=2)

    def request(visitor: str) -> Request:
        built = make_request(engine, "hello", None, sampling)
        built.visitor = visitor
        return built

    with loop._wake:  # everything is queued before the engine takes any
        handles = [loop.submit(request("flood")) for _ in range(10)]
        handles += [loop.submit(request("other")) for _ in range(2)]
        handles.append(loop.submit(request("")))
    for handle in handles:
        assert [e.finish_reason for e in handle if e.finish_reason] == ["length"]
    loop.close()
    assert order == ["flood", "other", "anonymous", "flood", "other"] + ["flood"] * 8


def test_one_visitor_may_hold_at_most_half_the_queue():
    engine = make_engine(limits=Limits(max_batch=1, max_waiting=4))
    loop = EngineLoop(engine)
    gate = Gate(loop)
    sampling = SamplingParams(temperature=0, max_new_tokens=2, min_new_tokens=2)

    def request(visitor: str) -> Request:
        built = make_request(engine, "hello", None, sampling)
        built.visitor = visitor
        return built

    try:
        running = loop.submit(request("flood"))
        wait_until(lambda: loop.health()["running_rows"] == 1, 10, "the batch is full")
        waiting = [loop.submit(request("flood")) for _ in range(2)]
        with pytest.raises(Busy, match="the most one visitor may queue"):
            loop.submit(request("flood"))
        other = loop.submit(request("other"))
        assert loop.health()["waiting"] == 3 and loop.health()["visitors_waiting"] == 2
    finally:
        gate.open()
    for handle in [running, *waiting, other]:
        assert [e.finish_reason for e in handle if e.finish_reason] == ["length"]
    loop.close()


def test_three_hundred_quick_requests_meet_429_with_retry_after(own_server):
    live = own_server(Limits())  # 30 requests a minute
    answers: Counter = Counter()
    with at(live, "127.0.5.1") as client:
        for _ in range(300):
            answer = client.post("/v1/chat/completions", json=chat(max_tokens=1))
            answers[answer.status_code] += 1
            if answer.status_code == 429:
                break
    assert 30 <= answers[200] <= 40  # a minute's worth, and what refilled meanwhile
    error = assert_openai_error(answer, 429, "rate_limit_exceeded")
    assert "30 requests a minute (max_requests_per_minute)" in error["message"]
    assert error["type"] == "requests"
    assert answer.headers["Retry-After"] in ("1", "2")  # one request refills in 2 s
    with at(live, "127.0.5.2") as other:  # another visitor is not affected
        assert other.post("/v1/chat/completions", json=chat(max_tokens=1)).status_code == 200


def test_token_and_request_buckets_refill_by_the_minute():
    now = [0.0]
    limits = Limits(max_requests_per_minute=30, max_tokens_per_minute=40_000, max_in_flight=2)
    visitors = Visitors(limits, clock=lambda: now[0])
    for _ in range(30):
        visitors.admit("ip:a").release()
    with pytest.raises(ApiError) as refused:
        visitors.admit("ip:a")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "2"}
    now[0] += 2.0
    ticket = visitors.admit("ip:a")
    ticket.tokens = 50_000  # 10,000 over the bucket: 15 s to refill one token
    ticket.release()
    now[0] += 60.0
    spender = visitors.admit("ip:a")
    spender.tokens = 80_000
    spender.release()
    with pytest.raises(ApiError) as refused:
        visitors.admit("ip:a")
    assert refused.value.kind == "tokens" and refused.value.headers == {"Retry-After": "76"}
    first, second = visitors.admit("ip:b"), visitors.admit("ip:b")
    with pytest.raises(ApiError) as refused:
        visitors.admit("ip:b")
    assert "2 requests in flight, at most 2 (max_in_flight)" in refused.value.message
    first.release()
    first.release()  # once only
    visitors.admit("ip:b")
    assert visitors.in_flight() == 2 and second


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_bodies_that_are_not_json_get_415(server, content_type):
    with at(server, "127.0.5.3") as client:
        answer = client.post(
            "/v1/chat/completions",
            content=json.dumps(chat()),
            headers={"Content-Type": content_type} if content_type else {},
        )
    error = assert_openai_error(answer, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"]


def test_forwarded_addresses_count_only_behind_a_trusted_proxy(own_server):
    limits = Limits(max_requests_per_minute=2)

    def third_is_refused(live, first: str, third: str) -> bool:
        with at(live, "127.0.6.1") as client:
            for forwarded in (first, first, third):
                headers = {"X-Forwarded-For": forwarded}
                answer = client.post("/v1/chat/completions", json=chat(), headers=headers)
            return answer.status_code == 429

    direct = own_server(limits)  # forwarded headers are the client's own words: ignored
    assert third_is_refused(direct, "203.0.113.1", "203.0.113.2")
    proxied = own_server(limits, access=Access(trusted_proxies=("127.0.6.0/24",)))
    assert not third_is_refused(proxied, "203.0.113.1", "203.0.113.2")
    assert third_is_refused(proxied, "198.51.100.1", "6.6.6.6, 198.51.100.1")


def test_client_address_takes_the_right_most_untrusted_hop():
    access = Access(trusted_proxies=("10.0.0.0/8",))
    assert client_address("10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.9", access) == "2.2.2.2"
    assert client_address("10.0.0.1", "garbage, 2.2.2.2", access) == "2.2.2.2"
    assert client_address("10.0.0.1", None, access) == "10.0.0.1"
    assert client_address("8.8.8.8", "1.1.1.1", access) == "8.8.8.8"
    assert visitor_key("2001:db8::1") == visitor_key("2001:db8::ffff") == "ip:2001:db8::/64"
    with pytest.raises(Exception, match="not an IP address or network"):
        Access(trusted_proxies=("example.com",))


def test_api_keys_where_the_host_sets_them(own_server):
    live = own_server(access=Access(api_keys=("s3cret",)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        answer = httpx.post(f"{live.url}/v1/chat/completions", json=chat(), headers=headers)
        assert_openai_error(answer, 401, "invalid_api_key")
    assert httpx.get(f"{live.url}/v1/models").status_code == 401
    key = {"Authorization": "Bearer s3cret"}
    ok = httpx.post(f"{live.url}/v1/chat/completions", json=chat(), headers=key, timeout=30)
    assert ok.status_code == 200
    assert httpx.get(f"{live.url}/healthz").status_code == 200  # health needs no key


# ---- 4. bad input is a 4xx in OpenAI's shape, a bug a 500 in the same shape ----

DEEP = "[" * 990 + "]" * 990


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (DEEP, 400, "invalid_json"),
        (json.dumps(chat())[:-1] + ', "steering": ' + DEEP + "}", 400, "invalid_json"),
        (json.dumps(chat()).replace('"hello how are you"', DEEP), 400, "invalid_json"),
        (json.dumps(chat()).replace("hello how are you", "\\ud800"), 400, "invalid_value"),
        (json.dumps(chat())[:-1] + ', "\\udfff": 1}', 400, "invalid_value"),
        (json.dumps(chat(temperature=1.0)).replace("1.0", "NaN"), 400, "invalid_json"),
        (
            json.dumps(chat(seed=1)).replace('"seed": 1', '"seed": ' + "9" * 5000),
            400,
            "invalid_json",
        ),
        ("[]", 400, "invalid_json"),
        ('"hello"', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        ("{", 400, "invalid_json"),
        (
            json.dumps(chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}])),
            400,
            "invalid_value",
        ),
        (json.dumps(chat(messages=[])), 400, "invalid_value"),
        (json.dumps(chat(messages=[{"role": "tool", "content": "x"}])), 400, "invalid_value"),
    ],
)
def test_bad_input_is_a_4xx_in_openai_shape(server, raw, status, code):
    with at(server, "127.0.7.1") as client:
        answer = client.post(
            "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
        )
    assert_openai_error(answer, status, code)


def test_a_bug_is_a_500_in_openai_shape_without_internals(server, monkeypatch):
    def broken(steering):
        raise RuntimeError("secret detail at /srv/steering/internal.py")

    monkeypatch.setattr(server.service, "plan", broken)
    with at(server, "127.0.7.2") as client:
        answer = client.post("/v1/chat/completions", json=chat())
    error = assert_openai_error(answer, 500, "internal_error")
    assert error["type"] == "server_error"
    assert "secret" not in answer.text and "Traceback" not in answer.text


# ---- 5. strict, short and path-free messages ----


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"seed": "1"}, "seed"),
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"compare": 1}, "compare"),
        ({"top_p": "1"}, "top_p"),
        ({"steering": {"presets": [{"name": PRESET_NAME, "scale": "2"}]}}, "steering"),
    ],
)
def test_strings_and_booleans_are_not_numbers(server, changes, param):
    with at(server, "127.0.8.1") as client:
        answer = client.post("/v1/chat/completions", json=chat(**changes))
    error = assert_openai_error(
        answer, 400, "invalid_steering" if param == "steering" else "invalid_value"
    )
    assert error["param"] == param


@pytest.mark.parametrize(
    "stop, words",
    [
        (["s"] * 9, "stop: 9 stop strings, at most 8 (max_stop_strings)"),
        (["", "x" * 100_000], "stop: a stop string is empty"),
        (
            ["x" * 100_000],
            "stop: stop string 0 has 100000 characters, at most 64 (max_stop_length)",
        ),
    ],
)
def test_stop_errors_name_stop_and_not_its_value(server, stop, words):
    with at(server, "127.0.8.2") as client:
        answer = client.post("/v1/chat/completions", json=chat(stop=stop))
    error = assert_openai_error(answer, 400, "invalid_value")
    assert error["param"] == "stop" and error["message"] == words


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "m" * 299},
        {"model": "m" * 100_000},
        {"x" * 100_000: 1},
        {"metadata": {"k" * 100_000: 1}},
        {"steering": {"presets": [{"name": "n" * 100_000}]}},
        {"messages": [{"role": "r" * 100_000, "content": "hi"}]},
    ],
)
def test_errors_echo_at_most_a_hundred_characters(server, changes):
    with at(server, "127.0.8.3") as client:
        answer = client.post("/v1/chat/completions", json=chat(**changes))
    assert 400 <= answer.status_code < 500
    assert len(answer.content) < 600, answer.text[:700]
    error = answer.json()["error"]
    assert not re.search(r"(.)\1{100}", answer.text)  # no run of 101 of the same character
    assert len(error["param"] or "") <= 120


def test_refused_saes_and_presets_never_show_a_server_path(server):
    preset = golden_gate_preset()
    preset["saes"][0]["ref"] = "/etc/passwd"
    with at(server, "127.0.8.4") as client:
        answer = client.post("/v1/chat/completions", json=chat(steering=preset))
        presets = client.get("/v1/presets").json()["data"]
    error = assert_openai_error(answer, 400, "invalid_steering")
    assert "'/etc/passwd' is a local path" in error["message"]
    assert error["message"].endswith("this server has loaded or allows: tiny-sae")
    assert str(server.service.saes["tiny-sae"].source) not in answer.text
    assert [sae["ref"] for sae in presets[0]["preset"]["saes"]] == ["tiny-sae"]
    preset["saes"] = presets[0]["preset"]["saes"]  # a listed preset works as it is
    with at(server, "127.0.8.4") as client:
        assert client.post("/v1/chat/completions", json=chat(steering=preset)).status_code == 200


# ---- 6. surface ----


def test_the_openapi_document_validates_and_docs_are_off(server):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{server.url}{path}").status_code == 404
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "/healthz" in document["paths"] and "/v1/chat/completions" in document["paths"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
