"""``POST /v1/features/contrast`` and ``GET /v1/features/neighbours`` against a live server:
the library's own numbers, and bad input a 400 in OpenAI's shape naming the value."""

from __future__ import annotations

import threading

import httpx
import pytest
from live_server import FEATURE, LABELS, start_server, tiny_service

from steering.features.contrast import contrast, contrast_json
from steering.features.neighbours import decoder_neighbours, neighbour_json
from steering.limits import Limits

A = ["the golden gate bridge", "the red bridge is big", "golden gate san francisco"]
B = ["hello how are you", "i am fine", "the cat is big", "a dog is a cat"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    limits = Limits(
        max_contrast_prompts=8,
        max_contrast_prompt_chars=2000,
        max_contrast_results=20,
        max_neighbours=12,
        max_requests_per_minute=10_000,
        max_tokens_per_minute=10**7,
        max_in_flight=32,
    )
    live = start_server(tiny_service(tmp_path_factory.mktemp("contrast"), limits), page=False)
    yield live
    live.stop()


def post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/features/contrast", json=body, timeout=30)


def get(server, **query) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/features/neighbours", params=query, timeout=30)


def test_a_contrast_answers_the_librarys_numbers(server):
    _, sae = server.service.offered_sae("tiny-sae")
    model = server.service.model
    for by in ("difference", "effect_size"):
        answer = post(server, prompts=A, against=B, sae="tiny-sae", top=7, by=by)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        expected = contrast(model, sae, A, B, top=7, by=by)
        assert data["data"] == [contrast_json(f) for f in expected]
        assert (data["sae"], data["by"], data["prompts"], data["against"]) == ("tiny-sae", by, 3, 4)
        assert data["neutral"] is False
    labelled = contrast(model, sae, A, B, top=20)
    assert {f["label"] for f in post(server, prompts=A, against=B).json()["data"]} == {
        f.label for f in labelled
    }


def test_no_against_is_the_neutral_baseline_not_counted_against_the_limit(server, monkeypatch):
    # The test server allows 8 prompts: the built-in baseline alone is more, and not counted.
    # (The baseline in the tiny tokenizer's words: it cannot read the everyday prompts.)
    from steering.serve import features_api

    baseline = [f"{w} {v}" for w in ("hello", "the cat", "a dog") for v in ("is big", "i am")]
    monkeypatch.setattr(features_api, "neutral_prompts", lambda model: baseline)
    _, sae = server.service.offered_sae("tiny-sae")
    answer = post(server, prompts=A, top=5, against=None)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    expected = contrast(server.service.model, sae, A, baseline, top=5)
    assert data["data"] == [contrast_json(f) for f in expected]
    assert (data["prompts"], data["against"], data["neutral"]) == (3, 6, True)
    answer = post(server, prompts=A * 3, top=5)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "limit_exceeded"
    assert error["message"] == "prompts: 9 prompts, at most 8 (max_contrast_prompts)"


def test_duplicates_are_dropped_and_counted(server):
    once = post(server, prompts=A, against=B, top=5).json()
    twice = post(server, prompts=[*A, A[2]], against=B, top=5).json()  # 8 sent: the limit
    assert twice["data"] == once["data"] and once["duplicates"] == 0
    assert (twice["prompts"], twice["against"], twice["duplicates"]) == (3, 4, 1)


def test_concurrent_contrasts_get_the_same_answer(server):
    body = {"prompts": A, "against": B, "top": 5}
    expected = post(server, **body).json()
    answers: list[dict] = []
    threads = [
        threading.Thread(target=lambda: answers.append(post(server, **body).json()))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [expected] * 4


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"prompts": A, "against": B, "sae": "/etc/sae"}, "sae", "'/etc/sae' is not an SAE"),
        ({"prompts": A, "against": B, "top": 0}, "top", "top: 0 must be an integer in 1..20"),
        ({"prompts": A, "against": B, "top": 21}, "top", "top: 21 must be an integer in 1..20"),
        ({"prompts": A, "against": B, "by": "size"}, "by", "by: Input should be"),
        ({"prompts": [], "against": B}, "prompts", "prompts: List should have at least 1"),
        ({"prompts": A, "against": []}, "against", "against: at least one prompt"),
        ({"prompts": A[:1], "against": B}, "prompts", "prompts: 1 distinct prompt, at least 2"),
        (
            {"prompts": A, "against": [B[0]] * 4},
            "against",
            "against: 1 distinct prompt (3 duplicates dropped), at least 2 are needed in each set",
        ),
        ({"prompts": A * 2, "against": B}, "prompts", "10 prompts in both sets, at most 8"),
        ({"prompts": ["a" * 2001, *A], "against": B}, "prompts", "2001 characters, at most 2000"),
        ({"prompts": [1, 2, 3], "against": B}, "prompts.0", "Input should be a valid string"),
        ({"prompts": A, "against": [*B, ""]}, "against", "against.4: '' has no tokens of its"),
        ({"prompts": ["cat " * 300, *A], "against": B}, "prompts", "prompts.0: 304 tokens"),
        ({"prompts": A, "against": B, "model": "x"}, "model", "unrecognized request argument"),
        ({"against": B}, "prompts", "prompts: Field required"),
    ],
)
def test_bad_contrasts_are_a_400_naming_the_value(server, body, param, words):
    answer = post(server, **body)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param, error
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_neighbours_answer_the_librarys_numbers(server):
    _, sae = server.service.offered_sae("tiny-sae")
    answer = get(server, sae="tiny-sae", feature=FEATURE, top=5)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    expected = decoder_neighbours(sae, FEATURE, top=5)
    assert data["data"] == [neighbour_json(n) for n in expected]
    assert (data["sae"], data["feature"], data["label"]) == ("tiny-sae", FEATURE, LABELS[FEATURE])
    default = get(server, feature=5).json()  # the first SAE, 10 neighbours
    assert default["data"] == [neighbour_json(n) for n in decoder_neighbours(sae, 5, top=10)]
    assert default["label"] == LABELS[5]


@pytest.mark.parametrize(
    "query, param, words",
    [
        ({"feature": 32}, "feature", "feature: 32 is not a feature of this SAE (valid: 0..31)"),
        ({"feature": -1}, "feature", "feature: -1 is not a feature of this SAE"),
        ({"feature": "x"}, "feature", "feature: 'x' is not an integer"),
        ({}, "feature", "feature: required"),
        ({"feature": 3, "top": 13}, "top", "top: 13 must be an integer in 1..12 (max_neighbours)"),
        ({"feature": 3, "top": 0}, "top", "top: 0 must be an integer in 1..12"),
        ({"feature": 3, "sae": "/etc/sae"}, "sae", "'/etc/sae' is not an SAE of this server"),
        ({"feature": 3, "k": 2}, "k", "'k': unrecognized query parameter"),
    ],
)
def test_bad_neighbour_queries_are_a_400_naming_the_value(server, query, param, words):
    answer = get(server, **query)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param, error
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_the_routes_are_listed_and_documented(server):
    missing = httpx.get(f"{server.url}/v1/features/nothing", timeout=10).json()["error"]
    assert "POST /v1/features/contrast" in missing["message"]
    assert "GET /v1/features/neighbours" in missing["message"]
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/features/contrast"]["post"]["requestBody"]
    fields = body["content"]["application/json"]["schema"]["properties"]
    assert set(fields) == {"prompts", "against", "sae", "top", "by"}
    params = schema["paths"]["/v1/features/neighbours"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"sae", "feature", "top"}
