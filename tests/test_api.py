"""The OpenAI-compatible API, driven by the real ``openai`` client against a live server."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
from live_server import FEATURE, PRESET_NAME, golden_gate_preset, start_server, tiny_service

from steering.limits import Limits

PROMPT = [{"role": "user", "content": "hello how are you"}]
GREEDY = {"temperature": 0, "max_tokens": 10}


# One client address sends every request here: its per-visitor limits are out of the way.
API_LIMITS = Limits(
    max_new_tokens=64,
    max_edits=4,
    max_multiple=50,
    max_requests_per_minute=10_000,
    max_tokens_per_minute=10**7,
    max_in_flight=32,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("api"), API_LIMITS))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def named(scale: float) -> dict:
    return {"steering": {"presets": [{"name": PRESET_NAME, "scale": scale}]}}


def test_models_presets_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["tiny-llama", "tiny-llama:golden-gate-bridge"]
    presets = httpx.get(f"{server.url}/v1/presets").json()["data"]
    assert presets[0]["name"] == PRESET_NAME
    assert presets[0]["features"][0]["feature"] == FEATURE
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["engine_alive"] is True


def test_compare_returns_steered_then_baseline(client):
    reply = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, **GREEDY, extra_body={**named(1.0), "compare": True}
    )
    steered, baseline = (c.message.content for c in reply.choices)
    assert [c.index for c in reply.choices] == [0, 1]
    assert steered and steered != baseline
    plain = client.chat.completions.create(model="tiny-llama", messages=PROMPT, **GREEDY)
    assert plain.choices[0].message.content == baseline
    assert reply.model_extra["steering"]["edits"] == 1
    assert reply.usage.completion_tokens == 20


def test_scale_zero_and_inline_preset(client):
    off = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, **GREEDY, extra_body=named(0.0)
    )
    plain = client.chat.completions.create(model="tiny-llama", messages=PROMPT, **GREEDY)
    assert off.choices[0].message.content == plain.choices[0].message.content
    preset = golden_gate_preset()
    preset["saes"][0]["ref"] = "tiny-sae"  # the reference the server loaded it under
    inline = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, **GREEDY, extra_body={"steering": preset}
    )
    by_name = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, **GREEDY, extra_body=named(1.0)
    )
    assert inline.choices[0].message.content == by_name.choices[0].message.content


def test_streaming_matches_the_plain_reply(client):
    kwargs = dict(model="tiny-llama", messages=PROMPT, **GREEDY, extra_body=named(1.0))
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_streaming_compare_interleaves_both_choices(client):
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=PROMPT,
        **GREEDY,
        stream=True,
        extra_body={**named(1.0), "compare": True},
    )
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(texts) and texts[0] != texts[1]


@pytest.mark.parametrize(
    "changes, extra, status, param, words",
    [
        ({"max_tokens": 65}, {}, 400, "max_tokens", "[1, 64]"),
        ({"model": "gpt-4"}, {}, 404, "model", "not served here"),
        ({"temperature": 9}, {}, 400, "temperature", "temperature 9"),
        ({}, named(6.0), 400, "steering", "over this server's limit of 50"),
        ({}, {"steering": {"presets": [{"name": "nope"}]}}, 400, "steering", "no preset named"),
    ],
)
def test_errors_name_the_limit(client, changes, extra, status, param, words):
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 4, **changes}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**body, extra_body=extra)
    error = caught.value
    assert error.status_code == status
    assert error.body["param"] == param and words in error.body["message"]
    assert set(error.body) == {"message", "type", "param", "code"}


def test_network_steering_may_only_use_loaded_saes(client):
    preset = golden_gate_preset()
    preset["saes"][0]["ref"] = "/etc/passwd"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-llama", messages=PROMPT, max_tokens=4, extra_body={"steering": preset}
        )
    assert "a local path" in caught.value.body["message"]


def test_too_many_edits_is_refused(client):
    preset = golden_gate_preset()
    preset["saes"][0]["ref"] = "tiny-sae"
    preset["edits"] = [{"sae": "s", "feature": i, "value": 1.0} for i in range(5)]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-llama", messages=PROMPT, max_tokens=4, extra_body={"steering": preset}
        )
    assert "at most 4 (max_edits)" in caught.value.body["message"]


def test_eight_concurrent_requests_get_their_own_replies(server, client):
    scales = [0.0, 0.25, 0.5, 1.0, 2.0, -1.0, 3.0, 4.0]

    def ask(scale: float) -> str:
        reply = client.chat.completions.create(
            model="tiny-llama",
            messages=PROMPT,
            temperature=0,
            max_tokens=24,
            extra_body=named(scale),
        )
        return reply.choices[0].message.content

    alone = [ask(scale) for scale in scales]
    assert len(set(alone)) > 2  # the steerings really differ
    with concurrent.futures.ThreadPoolExecutor(len(scales) + 1) as pool:
        together = pool.map(ask, scales)
        started = time.monotonic()
        page = httpx.get(f"{server.url}/", timeout=10)  # the page keeps serving meanwhile
        page_seconds = time.monotonic() - started
        assert list(together) == alone
    assert page.status_code == 200 and page_seconds < 5


# ---- the OpenAI edges ----


def test_developer_is_the_system_role(client):
    def reply(role: str) -> str:
        messages = [{"role": role, "content": "you are a cat"}, *PROMPT]
        result = client.chat.completions.create(model="tiny-llama", messages=messages, **GREEDY)
        return result.choices[0].message.content

    assert reply("developer") == reply("system")


def test_null_means_the_default_and_every_unknown_field_is_named(server, client):
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 2}
    nulls = {k: None for k in ("temperature", "top_p", "n", "stream", "logprobs", "compare")}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json={**body, **nulls}, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 2
    answer = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "frob": 1, "zork": 2}, timeout=30
    )
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("frob, zork")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-llama", messages=PROMPT, max_completion_tokens=500
        )
    assert caught.value.body["param"] == "max_completion_tokens"
    reply = client.chat.completions.create(
        model="tiny-llama:golden-gate-bridge", messages=PROMPT, max_tokens=2
    )
    assert reply.model == "tiny-llama:golden-gate-bridge"  # the id the client asked for


def test_max_completion_tokens_and_max_tokens_zero(client):
    reply = client.chat.completions.create(
        model="tiny-llama",
        messages=PROMPT,
        temperature=0,
        max_completion_tokens=3,
        extra_body={"min_tokens": 3},
    )
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=0)
    assert caught.value.body["param"] == "max_tokens"
    assert "max_tokens 0 must be an integer in [1, 64]" in caught.value.body["message"]


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported"),
        ({"n": 2}, "n", "unsupported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "unsupported"),
        ({"frobnicate": 1}, "frobnicate", "unrecognized"),
        ({"temperature": "0"}, "temperature", "invalid_value"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid"),
        ({"max_completion_tokens": 3}, "max_completion_tokens", "invalid_value"),
    ],
)
def test_options_the_server_does_not_implement_are_refused_by_name(server, extra, param, code):
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 2, **extra}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param
    assert error["code"].startswith(code) and param in error["message"]


def test_logprobs_for_steered_and_baseline_rows(client):
    def ask(extra: dict | None = None, **options):
        return client.chat.completions.create(
            model="tiny-llama",
            messages=PROMPT,
            temperature=0,
            max_tokens=6,
            extra_body={"min_tokens": 6, **(extra or {})},
            **options,
        )

    reply = ask({**named(1.0), "compare": True}, logprobs=True, top_logprobs=3)
    alone = ask(logprobs=True, top_logprobs=3).choices[0].logprobs.content
    for choice in reply.choices:
        content = choice.logprobs.content
        assert len(content) == 6
        for item in content:
            assert len(item.top_logprobs) == 3 and item.logprob <= 0
            assert item.logprob == item.top_logprobs[0].logprob  # greedy picks the best token
            assert bytes(item.bytes).decode() == item.token
    steered, baseline = (c.logprobs.content for c in reply.choices)
    assert [t.logprob for t in baseline] == [t.logprob for t in alone]
    assert [t.logprob for t in steered] != [t.logprob for t in baseline]
    chunks = list(ask(logprobs=True, stream=True))
    streamed = [i for c in chunks for ch in c.choices if ch.logprobs for i in ch.logprobs.content]
    assert [t.logprob for t in streamed] == [t.logprob for t in alone]
    assert all(t.top_logprobs == [] for t in streamed)
    assert ask().choices[0].logprobs is None


def test_a_preset_is_also_a_model_name(client):
    ids = [m.id for m in client.models.list()]
    assert "tiny-llama:golden-gate-bridge" in ids
    by_name = client.chat.completions.create(
        model="tiny-llama:golden-gate-bridge", messages=PROMPT, **GREEDY
    )
    by_field = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, **GREEDY, extra_body=named(1.0)
    )
    unsteered = client.chat.completions.create(model="tiny-llama", messages=PROMPT, **GREEDY)
    assert by_name.choices[0].message.content == by_field.choices[0].message.content
    assert by_name.choices[0].message.content != unsteered.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="tiny-llama:no-such-preset", messages=PROMPT)
    assert "tiny-llama:golden-gate-bridge" in caught.value.body["message"]


def test_unknown_routes_and_the_openapi_document(server, client):
    for path in ("/v1/completions-of-sorts", "/v1", "/v1/x%0Ay", "/v1/presets/%0D%0A"):
        answer = httpx.get(f"{server.url}{path}", timeout=10)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
    # Any character, newlines included, stays in the API's own error shape.
    answer = httpx.get(f"{server.url}/v1/models/%0A0", timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert (
        client.models.retrieve("tiny-llama:golden-gate-bridge").id
        == "tiny-llama:golden-gate-bridge"
    )
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny-llama:nope")
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    fields = schema["components"]["schemas"]["ChatRequest"]["properties"]
    assert {"messages", "steering", "compare", "logprobs"} <= set(fields)
    assert set(schema["paths"]) >= {"/v1/models", "/v1/presets", "/healthz"}


# ---- strength sweeps ----

SWEEP_SAMPLING = {"temperature": 0.9, "top_p": 0.95, "max_tokens": 12, "seed": 2}


def test_a_sweep_answers_each_multiplier_as_its_own_request_would(client):
    check_sweep(client, distinct=3)


def check_sweep(client, distinct: int) -> None:
    """A sweep's choices are the replies of one request per multiplier; at least ``distinct``
    of the four differ (how many is the model's doing)."""
    scales = [0, 0.5, 1, 2]
    reply = client.chat.completions.create(
        model="tiny-llama",
        messages=PROMPT,
        **SWEEP_SAMPLING,
        extra_body={**named(1.0), "sweep": scales},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.model_extra["sweep_scale"] for c in reply.choices] == scales
    texts = [c.message.content for c in reply.choices]
    for scale, text in zip(scales, texts):
        alone = client.chat.completions.create(
            model="tiny-llama", messages=PROMPT, **SWEEP_SAMPLING, extra_body=named(scale)
        )
        assert alone.choices[0].message.content == text
    plain = client.chat.completions.create(model="tiny-llama", messages=PROMPT, **SWEEP_SAMPLING)
    assert texts[0] == plain.choices[0].message.content
    assert len(set(texts)) >= distinct  # the strengths really differ
    assert reply.usage.completion_tokens == 4 * 12
    assert reply.model_extra["steering"]["edits"] == 1


def test_a_streaming_sweep_reassembles_to_the_plain_answer(client):
    kwargs = dict(
        model="tiny-llama:golden-gate-bridge",  # the preset a model name applies sweeps too
        messages=PROMPT,
        **SWEEP_SAMPLING,
        extra_body={"sweep": [4, 0, 1]},
    )
    whole = client.chat.completions.create(**kwargs)
    texts, scales, finishes = ["", "", ""], {}, {}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            scales.setdefault(choice.index, set()).add(choice.model_extra["sweep_scale"])
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == [c.message.content for c in whole.choices]
    assert scales == {0: {4}, 1: {0}, 2: {1}} and finishes == {
        0: "length",
        1: "length",
        2: "length",
    }


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            {**named(1.0), "sweep": list(range(9))},
            "sweep: 9 multipliers, at most 8 (max_sweep_rows)",
        ),
        ({**named(1.0), "sweep": [1, 6]}, "sweep.1: multiplier 6: Golden Gate Bridge: edits.0"),
        ({**named(1.0), "sweep": [-6]}, "over this server's limit of 50"),
        ({**named(1.0), "sweep": []}, "sweep: give at least one multiplier"),
        ({"sweep": [0, 1]}, "sweep: needs a steering"),
        ({**named(1.0), "sweep": [0, 1], "compare": True}, "combined with compare"),
        ({**named(1.0), "sweep": [0, 1], "n": 2}, "combined with n > 1"),
    ],
)
def test_bad_sweeps_are_a_400_naming_the_value(server, extra, words):
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 2, **extra}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "sweep"
    assert words in error["message"]


def test_a_sweep_of_nan_is_not_json(server):
    body = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], '
    body += b'"steering": {"presets": [{"name": "Golden Gate Bridge"}]}, "sweep": [1, NaN]}'
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 400 and "NaN is not a number JSON allows" in answer.text


# ---- what lights up ----


def activations(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/activations", json=body, timeout=30)


def test_activations_of_a_chat_are_the_services_own(server):
    chat = [*PROMPT, {"role": "assistant", "content": "the golden gate bridge"}]
    answer = activations(server, messages=chat, sae="tiny-sae", features=[FEATURE, 5], top_k=3)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    found = server.service.activations(chat, "tiny-sae", features=[FEATURE, 5], top_k=3)
    assert data["sae"] == "tiny-sae" and data["reply_start"] == found.reply_start > 0
    assert [t["text"] for t in data["tokens"]] == list(found.tokens)
    _, sae = server.service.offered_sae("tiny-sae")
    for token, top, t in zip(data["tokens"], found.top, range(len(found.tokens))):
        assert [(e["feature"], e["activation"]) for e in token["top"]] == list(top)
        assert [e["label"] for e in token["top"]] == [sae.labels.get(f) for f, _ in top]
        assert token["features"] == {
            str(FEATURE): found.features[FEATURE][t],
            "5": found.features[5][t],
        }
    assert data["max_activation"] == {str(f): m for f, m in found.max_activation.items()}
    text = "".join(t["text"] for t in data["tokens"][data["reply_start"] :])
    assert text.strip() == "the golden gate bridge"
    plain = activations(server, text="the golden gate bridge").json()  # the first SAE by default
    assert plain["sae"] == "tiny-sae" and plain["reply_start"] is None
    assert "".join(t["text"] for t in plain["tokens"]) == "the golden gate bridge"


@pytest.mark.parametrize(
    "body, param, words",
    [
        (
            {"text": "hi", "sae": "/etc/sae"},
            "sae",
            "'/etc/sae' is not an SAE of this server; use one of ['tiny-sae']",
        ),
        (
            {"text": "hi", "features": [32]},
            "features",
            "32 is not a feature of this SAE (valid: 0..31)",
        ),
        (
            {"text": "hi", "features": [1, 2, 3, 4, 5]},
            "features",
            "5 features, at most 4 (max_edits)",
        ),
        ({"text": "hi", "top_k": 0}, "top_k", "top_k: 0 must be an integer in 1..32"),
        ({"text": "hi", "top_k": 33}, "top_k", "top_k: 33"),
        ({"text": "cat " * 300}, "text", "text: 300 tokens, at most 256"),
        ({"text": "hi", "messages": PROMPT}, "text", "give exactly one of them"),
        ({}, "text", "give exactly one of them"),
        ({"text": "hi", "model": "x"}, "model", "unrecognized request argument"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "must follow a user"),
        ({"text": "a" * 70_000}, "text", "70000 characters, at most 65536"),
    ],
)
def test_activation_bounds_are_a_400_naming_the_value(server, body, param, words):
    answer = activations(server, **body)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param, error
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_activations_are_in_the_openapi_document(server):
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/activations"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ActivationsRequest")
    fields = schema["components"]["schemas"]["ActivationsRequest"]["properties"]
    assert set(fields) == {"text", "messages", "sae", "features", "top_k"}
    assert "sweep" in schema["components"]["schemas"]["ChatRequest"]["properties"]


def test_activations_asked_during_a_steered_stream_are_the_unsteered_ones(server, client):
    """The preset clamps a feature of the SAE read here, at its hook point: a probe that saw
    the stream's steering would read other activations. Neither answer changes the other."""
    body = {"text": "the golden gate bridge is big", "features": [FEATURE], "top_k": 5}
    before = activations(server, **body).json()
    kwargs = dict(
        model="tiny-llama",
        messages=PROMPT,
        temperature=0.9,
        seed=5,
        max_tokens=64,
        extra_body={**named(1.0), "min_tokens": 64},
    )
    alone = client.chat.completions.create(**kwargs).choices[0].message.content
    text, during = "", []
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        text += "".join(c.delta.content or "" for c in chunk.choices)
        if text and len(during) < 3:
            during.append(activations(server, **body).json())
    assert during == [before] * 3 and text == alone
