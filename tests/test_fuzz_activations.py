"""``POST /v1/activations`` and sweeps under generated input: schemathesis from the route's own
OpenAPI schema, and nasty bodies. No input may get a 5xx or hang, and afterwards the server
answers a reference probe exactly as before."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import PRESET_NAME, start_server, tiny_service
from schemathesis import GenerationMode
from test_fuzz import NASTY_VALUE, TIMEOUT, post_nasty

from steering.limits import Limits

REFERENCE = {"text": "the golden gate bridge", "features": [3], "top_k": 4}
SWEEP = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "hello how are you"}],
    "temperature": 0,
    "max_tokens": 4,
    "steering": {"presets": [{"name": PRESET_NAME, "scale": 1.0}]},
    "sweep": [0, 1, 2],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    limits = Limits(
        max_new_tokens=16,
        default_new_tokens=8,
        max_requests_per_minute=100_000,
        max_tokens_per_minute=10_000_000,
    )
    live = start_server(tiny_service(tmp_path_factory.mktemp("fuzz"), limits), page=False)
    live.reference = httpx.post(f"{live.url}/v1/activations", json=REFERENCE).json()
    yield live
    assert httpx.post(f"{live.url}/v1/activations", json=REFERENCE).json() == live.reference
    live.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_activations_route_never_answers_5xx(server, mode):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").include(
        path="/v1/activations"
    )
    counts = {"cases": 0, "2xx": 0}

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(timeout=TIMEOUT)
        counts["cases"] += 1
        counts["2xx"] += response.status_code < 300
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    print(f"schemathesis {mode.value} /v1/activations: {counts}")
    assert counts["cases"] == 60


@given(
    changes=st.dictionaries(
        st.sampled_from(["text", "messages", "sae", "features", "top_k"]),
        NASTY_VALUE,
        min_size=1,
        max_size=3,
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_nasty_activation_bodies_get_4xx_or_an_answer(server, changes):
    post_nasty(server, "/v1/activations", {**REFERENCE, **changes})


@given(sweep=NASTY_VALUE)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_nasty_sweeps_get_4xx_or_a_reply(server, sweep):
    post_nasty(server, "/v1/chat/completions", {**SWEEP, "sweep": sweep})
