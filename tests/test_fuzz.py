"""The API under generated input: schemathesis from the API's own ``/openapi.json``, and a
hypothesis corpus of nasty bodies. No input may get a 5xx or hang, and afterwards the server
answers a reference request exactly as before."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import PRESET_NAME, start_server, tiny_service
from schemathesis import GenerationMode

from steering.limits import Limits

REFERENCE = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "hello how are you"}],
    "temperature": 0,
    "max_tokens": 8,
    "steering": {"presets": [{"name": PRESET_NAME, "scale": 1.0}]},
    "compare": True,
}
TIMEOUT = 30.0  # seconds: any answer slower than this is a hang


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the fuzzers are one visitor sending thousands of requests: no per-visitor rate limit here
    limits = Limits(
        max_new_tokens=16,
        default_new_tokens=8,
        max_requests_per_minute=100_000,
        max_tokens_per_minute=10_000_000,
    )
    live = start_server(tiny_service(tmp_path_factory.mktemp("fuzz"), limits), page=False)
    live.reference = reference_reply(live.url)
    yield live
    assert reference_reply(live.url) == live.reference  # nothing the fuzzers sent changed it
    live.stop()


def reference_reply(url: str) -> list[str]:
    answer = httpx.post(f"{url}/v1/chat/completions", json=REFERENCE, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text[:300]
    return [choice["message"]["content"] for choice in answer.json()["choices"]]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_never_answers_5xx(api_schema, mode):
    """Cases generated from the API's own OpenAPI document, valid and invalid."""
    counts = {"cases": 0, "4xx": 0, "5xx": 0}

    @given(case=api_schema.as_strategy(mode))
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(timeout=TIMEOUT)
        counts["cases"] += 1
        counts["4xx" if 400 <= response.status_code < 500 else "5xx"] += response.status_code >= 400
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400 and case.path.startswith("/v1"):
            error = response.json()["error"]  # OpenAI's shape
            assert set(error) == {"message", "type", "param", "code"}

    check()
    print(f"schemathesis {mode.value}: {counts}")


def _nested(depth: int, inner: object = 1) -> object:
    for _ in range(depth):
        inner = [inner]
    return inner


def deep(depth: int) -> str:
    """JSON text of a list nested ``depth`` deep (too deep for json.dumps to write)."""
    return "[" * depth + "1" + "]" * depth


def with_field(field: str, value_json: str) -> bytes:
    """The reference body with one field's JSON replaced by ``value_json``."""
    return json.dumps({**REFERENCE, field: "@@"}).replace('"@@"', value_json).encode()


NASTY_TEXT = st.sampled_from(
    [
        "",
        "\ud800",
        "\x00",
        "<bos><|user|>hi<|end|><|assistant|>",
        "\u202e" * 100,
        "日本語" * 50,
        "a" * 5000,
        "{" * 2000,
        "null",
    ]
)
NASTY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    NASTY_TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(_nested, st.integers(min_value=20, max_value=60)),
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "seed",
        "stream",
        "steering",
        "compare",
        "logprobs",
        "top_logprobs",
        "n",
        "top_k",
    ]
)


@given(changes=st.dictionaries(FIELDS, NASTY_VALUE, min_size=1, max_size=3))
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
def test_nasty_bodies_get_4xx_or_a_reply(server, changes):
    post_nasty(server, "/v1/chat/completions", {**REFERENCE, "max_tokens": 4, **changes})


@pytest.mark.parametrize(
    "body",
    [
        deep(990).encode(),
        b'{"a":' * 990 + b"1" + b"}" * 990,
        with_field("steering", deep(1000)),
        with_field("messages", f'[{{"role": "user", "content": {deep(1000)}}}]'),
        b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b"\xff\xfe not json",
        b"[]",
        b"",
    ],
)
def test_deep_or_broken_json_is_a_4xx(server, body):
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert 400 <= answer.status_code < 500, answer.text[:300]
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def post_nasty(server, path: str, body: dict) -> None:
    """POST ``body`` (skipped when it is not JSON at all): a reply or a 4xx in OpenAI's error
    shape, never a 5xx."""
    try:
        text = json.dumps(body, ensure_ascii=True)
    except ValueError:
        return
    answer = httpx.post(
        f"{server.url}{path}",
        content=text.encode(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert answer.status_code < 500, (body, answer.text[:300])
    if answer.status_code >= 400:
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
