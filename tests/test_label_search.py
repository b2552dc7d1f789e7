"""Search by label text (ranked) and by index: the library, ``steering search`` and
``GET /v1/features/search``."""

from __future__ import annotations

import json

import httpx
import pytest
from live_server import start_server, tiny_service
from random_saes import random_sae
from test_browser import browser, missing, open_page, wait_status  # noqa: F401

from steering.cli import main
from steering.errors import LimitError, RequestError
from steering.features.labels import label_index, search_labels

LABELS = {
    0: "Python code",
    1: "code comments in Python and other programming languages",
    2: "the Golden Gate Bridge",
    3: "bridges and tunnels",
    4: "the word 'the'",
    5: "cats",
    6: "cats and dogs",
    7: "pythons (snakes)",
    8: "San Francisco, the Bay Area",
    9: "the Golden State Warriors",
    10: "bridge (the card game)",
    11: "year 1923",
}


@pytest.fixture(scope="module")
def sae():
    sae = random_sae(8, 64, layer=1)
    sae.labels = dict(LABELS)
    return sae


def ranked(sae, query, limit=20):
    return [(m.index, m.score, m.match) for m in search_labels(sae, query, limit)]


def test_labels_rank_by_bm25_over_words(sae):
    # a whole word beats the same word inside a longer label; a rare word beats a common one
    assert ranked(sae, "python") == [
        (0, 1.5802, "label"),
        (7, 1.2139, "label"),
        (1, 0.8472, "label"),
    ]
    assert ranked(sae, "golden gate bridge") == [
        (2, 4.786, "label"),  # all three words
        (9, 1.541, "label"),  # golden
        (10, 1.2265, "label"),  # bridge, in a shorter label than 3's "bridges"
        (3, 1.0248, "label"),  # bridges: begins with "bridge"
    ]
    assert ranked(sae, "code python") == [
        (0, 3.5657, "label"),
        (1, 1.9117, "label"),
        (7, 1.2139, "label"),
    ]
    assert [m[0] for m in ranked(sae, "the")] == [4, 2, 9, 10, 8]  # "the" twice in label 4


def test_a_word_being_typed_matches_the_words_it_begins(sae):
    # "pyth" is no word: it matches python and pythons alike (a tie goes to the lower index)
    assert ranked(sae, "pyth") == [(0, 1.2139, "label"), (7, 1.2139, "label"), (1, 0.576, "label")]
    assert ranked(sae, "GOLDEN  gate") == [(2, 3.5595, "label"), (9, 1.541, "label")]
    assert ranked(sae, "g") == []  # one letter: whole words only
    assert ranked(sae, "zzz") == []


def test_an_index_comes_first_labelled_or_not(sae):
    assert search_labels(sae, "#5", 3)[0].label == "cats"
    assert ranked(sae, "#5") == [(5, 0.0, "index")]
    assert ranked(sae, " 40 ") == [(40, 0.0, "index")]  # no label
    assert search_labels(sae, "40")[0].label is None
    # digits past the width are label text (a year); with "#" they are an index, refused
    assert ranked(sae, "1923") == [(11, 2.6006, "label")]
    with pytest.raises(
        RequestError, match="there is no feature #1923: this SAE has features 0 to 63"
    ):
        search_labels(sae, "#1923")


def test_bad_queries_and_limits_are_refused(sae):
    for query in ("", "   ", None):
        with pytest.raises(RequestError, match="give some words of a label, or a feature index"):
            search_labels(sae, query)  # type: ignore[arg-type]
    with pytest.raises(LimitError, match="q: 201 characters; a search takes at most 200"):
        search_labels(sae, "a" * 201)
    for limit in (0, 201):
        with pytest.raises(LimitError, match=rf"limit: {limit} is outside 1..200"):
            search_labels(sae, "cats", limit)
    assert len(search_labels(sae, "the", 2)) == 2


def test_the_index_follows_new_labels():
    sae = random_sae(8, 16, layer=1)
    sae.labels = {1: "alpha"}
    first = label_index(sae)
    assert label_index(sae) is first  # kept
    sae.labels = {1: "alpha", 2: "alpha beta"}
    assert [m.index for m in search_labels(sae, "beta")] == [2]


def test_the_search_command(capsys):
    # the demo SAE by default; its labels are the demo world's
    assert main(["search", "#3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["data"] == [
        {"index": 3, "label": "fires on: famous (bridge)", "score": 0.0, "match": "index"}
    ]
    assert main(["search", "kitten", "--limit", "1"]) == 0
    assert capsys.readouterr().out.split() == [
        "#585",
        "5.09",
        "fires",
        "on:",
        "cat,",
        "kitten",
        "(cats)",
    ]
    assert main(["search", "x", "--limit", "0"]) == 1
    assert "limit: 0 is outside 1..200" in capsys.readouterr().err


# ---- the API ----


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("search")))
    yield live
    live.stop()


def get(server, **params):
    return httpx.get(f"{server.url}/v1/features/search", params=params, timeout=10)


def test_the_api_ranks_labels_and_finds_indices(server):
    answer = get(server, q="golden bridge")
    assert answer.status_code == 200
    assert answer.json() == {
        "object": "list",
        "sae": "tiny-sae",
        "query": "golden bridge",
        "data": [
            {"index": 3, "label": "the Golden Gate Bridge", "score": 1.5181, "match": "label"}
        ],
    }
    by_index = get(server, q="#7", sae="tiny-sae", limit="5").json()["data"]
    assert by_index == [{"index": 7, "label": "the sea", "score": 0.0, "match": "index"}]
    assert [m["index"] for m in get(server, q="the", limit="1").json()["data"]] == [
        7
    ]  # the shorter label


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({}, "q", "q: give some words of a label, or a feature index"),
        ({"q": "x" * 201}, "q", "q: 201 characters; a search takes at most 200"),
        ({"q": "#32"}, "q", "there is no feature #32: this SAE has features 0 to 31"),
        ({"q": "sea", "limit": "0"}, "limit", "limit: 0 is outside 1..200"),
        ({"q": "sea", "limit": "ten"}, "limit", "limit: 'ten' is not a whole number"),
        ({"q": "sea", "sae": "nope"}, "sae", "sae: 'nope' is not an SAE of this server"),
        ({"q": "sea", "query": "sea"}, "query", "unknown parameter 'query'"),
    ],
)
def test_the_api_refuses_bad_parameters_in_openai_shape(server, params, param, message):
    answer = get(server, **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"]


def test_the_route_is_listed_and_documented(server):
    answer = httpx.get(f"{server.url}/v1/features/nope", timeout=10)
    assert (
        answer.status_code == 404 and "GET /v1/features/search" in answer.json()["error"]["message"]
    )
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    names = [p["name"] for p in schema["paths"]["/v1/features/search"]["get"]["parameters"]]
    assert names == ["q", "sae", "limit"]


# ---- the page's search box ----


def test_the_search_box_offers_ranked_matches_as_the_visitor_types(server):
    import gradio as gr

    from ui.handlers import Handlers

    handlers = Handlers(server.service)
    bridge, sea = ("the Golden Gate Bridge (#3)", "tiny-sae#3"), ("the sea (#7)", "tiny-sae#7")
    assert handlers.feature_choices("golden bridge") == [bridge]  # words, not a substring
    assert handlers.feature_choices("the") == [bridge, sea]  # a preset's name first
    assert handlers.feature_choices("#7") == [sea]
    assert handlers.feature_choices("20") == [("no label (#20)", "tiny-sae#20")]
    assert handlers.feature_choices("#99") == handlers.feature_choices("x" * 300) == []
    typed = gr.KeyUpData(None, {"key": "a", "input_value": "the se"})
    assert handlers.search_choices(typed) == gr.skip()  # the box holds all 3 labels already


def test_the_search_box_of_an_sae_with_many_labels_updates_as_the_visitor_types(
    server, monkeypatch
):
    import gradio as gr

    import ui.handlers
    from ui.handlers import Handlers

    monkeypatch.setattr(ui.handlers, "FIRST_CHOICES", 2)  # fewer than the SAE's 3 labels
    handlers = Handlers(server.service)
    bridge, sea = ("the Golden Gate Bridge (#3)", "tiny-sae#3"), ("the sea (#7)", "tiny-sae#7")
    typed = gr.KeyUpData(None, {"key": "e", "input_value": "the se"})
    assert handlers.search_choices(typed) == {"__type__": "update", "choices": [sea, bridge]}
    cleared = gr.KeyUpData(None, {"key": "Backspace", "input_value": ""})
    first = [bridge, ("cats (#5)", "tiny-sae#5")]  # the preset's feature, then by index
    assert handlers.search_choices(cleared)["choices"] == first


@pytest.mark.skipif(missing is not None, reason=missing or "")
def test_the_page_finds_a_feature_the_box_did_not_hold(server, browser, monkeypatch):  # noqa: F811
    """In a real browser: the box holds only its first choices; an index typed brings the
    feature in from the server as the visitor types, and Add adds it."""
    import ui.handlers

    monkeypatch.setattr(ui.handlers, "FIRST_CHOICES", 2)  # as an SAE with many labels
    page = open_page(browser, server.url)
    search = page.locator("#search input")
    search.click()
    search.press_sequentially("#20", delay=50)
    option = page.locator("#search li[aria-label='no label (#20)']")
    option.wait_for(timeout=10_000)
    option.click()
    page.locator("#add").click()
    wait_status(page, "(#20); set its strength and scope on its card.")
