"""The page without a browser: gradio_client against the live app, and the handlers' rules
(share links, uploads, the busy message, regenerate)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import gradio as gr
import pytest
from gradio_client import Client
from live_server import FEATURE, PRESET_NAME, start_server, tiny_service

from steering.errors import PresetError
from steering.serve import Preset, SamplingParams, flatten_content
from ui.conversation import without_last_exchange
from ui.features import decode_share, encode_share, preset_from_rows, rows_from_network
from ui.handlers import BUSY, CUSTOM, NO_PRESET, Handlers


def text(chat: list[dict]) -> list[str]:
    """The text of each message Gradio sends back (content as a list of blocks)."""
    return [flatten_content(m["content"]) for m in chat]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("ui")))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def handlers(server):
    return Handlers(server.service)


def test_gradio_client_gets_both_replies(server):
    client = Client(f"{server.url}/", verbose=False)
    box, steered, baseline, notice = client.predict(
        "hello how are you", 0, 1.0, 8, 0, api_name="/respond"
    )
    assert notice == ""  # the box empties when the message goes out; later updates skip it
    assert [m["role"] for m in steered] == ["user", "assistant"]
    steered_text, baseline_text = text(steered)[-1], text(baseline)[-1]
    assert steered_text and baseline_text and steered_text != baseline_text  # the default preset

    job = client.submit("hello how are you", 0, 1.0, 8, 0, api_name="/respond")
    updates = list(job)
    assert text(job.outputs()[-1][1])[-1] == steered_text
    assert len(updates) >= 2  # the user turn first, then the streamed replies


def test_the_default_steering_is_the_golden_gate_preset(handlers):
    assert handlers.default_preset() == PRESET_NAME
    rows = handlers.preset_rows(PRESET_NAME)
    assert rows[0].feature == FEATURE and rows[0].value == 10.0


def test_share_code_round_trips_through_the_safe_parser(handlers):
    rows = handlers.preset_rows(PRESET_NAME)
    rows = [dataclasses.replace(rows[0], value=6.5)]
    code = encode_share(preset_from_rows(handlers.service, rows))
    assert "=" not in code and "+" not in code and "/" not in code
    restored = rows_from_network(handlers.service, decode_share(code))
    assert [(r.feature, r.value) for r in restored] == [(FEATURE, 6.5)]


def test_a_zero_or_switched_off_slider_steers_nothing(handlers):
    rows = handlers.preset_rows(PRESET_NAME)
    zero, off = dataclasses.replace(rows[0], value=0), dataclasses.replace(rows[0], on=False)
    assert preset_from_rows(handlers.service, [zero]) is None
    assert preset_from_rows(handlers.service, [off]) is None
    assert handlers.service.plan(handlers.preset([zero]))[0].is_empty


def test_bad_share_links_and_uploads_say_why(handlers):
    with pytest.raises(PresetError, match="not valid JSON"):
        rows_from_network(handlers.service, decode_share("bm90IGpzb24"))
    preset = preset_from_rows(handlers.service, handlers.preset_rows(PRESET_NAME))
    preset = preset.model_dump(mode="json")
    preset["saes"][0]["ref"] = "/home/someone/private-sae"
    with pytest.raises(PresetError, match="a local path"):
        rows_from_network(handlers.service, json.dumps(preset))
    bad = '{"format_version": 1, "name": "x", "extra": 1}'
    rows, _, message, box = handlers.upload("bad.json", len(bad), bad, {"rev": 0}, ["unchanged"])
    assert rows == ["unchanged"] and "cannot be used" in message and "extra" in message
    assert box == gr.skip()  # the preset box changes only when the steering does


def test_uploads_are_json_presets_within_the_limit(handlers):
    """The browser sends the file's name, size and text; the server checks all three before
    parsing, and a closed file chooser changes nothing."""
    most = handlers.service.limits.max_upload_bytes
    layout, rows = {"rev": 0}, ["unchanged"]
    assert handlers.upload("", 0, "", layout, rows) == (gr.skip(),) * 4
    _, _, message, _ = handlers.upload("preset.txt", 2, "{}", layout, rows)
    assert message == "**That preset file cannot be used:** pick a `.json` preset file."
    _, _, message, _ = handlers.upload("big.json", most + 5, "", layout, rows)
    assert f"it has {most + 5:,} bytes; a preset file has at most {most:,}" in message
    _, _, message, _ = handlers.upload("big.json", 10, "é" * (most // 2 + 1), layout, rows)
    assert f"it has {2 * (most // 2 + 1):,} bytes" in message
    kept, _, message, _ = handlers.upload("junk.json", 3, "\x00{[", layout, rows)
    assert kept == rows and message.endswith(
        "it is not a JSON preset file (it does not read as JSON)."
    )


def test_a_raw_client_cannot_break_the_steering(handlers):
    rows = handlers.preset_rows(PRESET_NAME)
    for key, value in [("value", float("nan")), ("value", "7"), ("value", True), ("on", "no")]:
        assert handlers.set_value(rows, 0, key, value) == rows
    assert handlers.set_value(rows, 0, "value", 3)[0].value == 3
    _, _, message, _ = handlers.pick_preset("no such preset", {"rev": 0})
    assert message == "There is no such preset: pick one from the list."
    with pytest.raises(gr.Error, match="finite numbers"):
        list(handlers.respond("hi", None, rows, "hot", 1.0, 4, 0, None))


def test_add_by_label_or_index_and_remove(handlers):
    choices = dict(handlers.feature_choices())
    label = next(k for k in choices if "cats" in k)
    rows, layout, message, box = handlers.add(choices[label], [], {"rev": 0})
    assert rows[0].label == "cats" and layout["rev"] == 1 and "Added" in message
    assert box == CUSTOM
    rows, layout, _, _ = handlers.add("7", rows, layout)
    assert [r.feature for r in rows] == [5, 7]
    _, _, message, _ = handlers.add("99", rows, layout)
    assert (
        message
        == "Cannot add that feature: there is no feature #99: this SAE has features 0 to 31."
    )
    _, _, message, _ = handlers.add("elsewhere#3", rows, layout)
    assert message.endswith("this server has no such SAE; it has tiny-sae.")
    rows, layout, _, box = handlers.remove(rows, layout, 0)
    assert [r.feature for r in rows] == [7] and layout["rows"] == rows and box == CUSTOM
    rows, layout, _, box = handlers.remove(rows, layout, 0)
    assert rows == [] and box == NO_PRESET


def test_an_added_feature_steers_as_the_presets_of_its_sae_do(handlers):
    """The test server's one preset clamps its SAE's feature at 10x on every position: a
    feature added from the search box starts the same way, not at 0."""
    rows, _, _, _ = handlers.add("tiny-sae#5", [], {"rev": 0})
    (row,) = rows
    assert (row.mode, row.unit, row.value, row.positions) == ("clamp", "max_act", 10.0, "all")
    rows = handlers.set_scope(rows, 0, "your words only")
    assert (rows[0].positions, rows[0].skip_special_tokens) == ("prompt", True)
    assert handlers.set_scope(rows, 0, "somewhere else") == rows


def test_a_card_shows_the_feature_and_its_top_contexts_escaped(handlers):
    from steering.serve import FeatureContext
    from ui.cards import card_html
    from ui.features import top_contexts

    sae = handlers.service.sae_for("tiny-sae")
    contexts = tuple(
        FeatureContext(f"over the <b>{n}</b> ", "bridge", " in fog", 9.5 - n) for n in range(5)
    )
    saved, sae.contexts = sae.contexts, {FEATURE: contexts}
    try:
        (row,) = handlers.preset_rows(PRESET_NAME)
        shown = top_contexts(handlers.service, row)
    finally:
        sae.contexts = saved
    assert shown == contexts[:3]  # the best three
    html = card_html(row, shown)
    assert '<div class="feature-label">the Golden Gate Bridge</div>' in html
    assert f"#{FEATURE} · SAE <code>tiny-sae</code> · clamped, in × max activation" in html
    assert html.count("<mark>bridge</mark>") == 3 and "&lt;b&gt;0&lt;/b&gt;" in html
    assert "<b>" not in html
    # Pieces of a word-level tokenizer carry no spaces: the card puts them back.
    spaced = card_html(row, (FeatureContext("i just walked", "across", "the bridge", 4.5),))
    assert "i just walked <mark>across</mark> the bridge" in spaced
    bpe = card_html(row, (FeatureContext("the golden gate", " bridge", " is red", 4.5),))
    assert "the golden gate<mark> bridge</mark> is red" in bpe


def test_the_search_finds_a_feature_by_its_preset_name(handlers):
    """A preset's label for a feature is in the search box's text for it, before the SAE's
    own label, and the features presets name come first."""
    choices = handlers.feature_choices()
    assert choices[0] == ("the Golden Gate Bridge (#3)", f"tiny-sae#{FEATURE}")  # one label
    sae = handlers.service.sae_for("tiny-sae")
    saved, sae.labels = sae.labels, {**sae.labels, FEATURE: "san / fog / bridge"}
    try:
        named = handlers.feature_choices()[0]
    finally:
        sae.labels = saved
    assert named == ("the Golden Gate Bridge · san / fog / bridge (#3)", f"tiny-sae#{FEATURE}")
    assert [v for k, v in choices if "bridge" in k.lower()] == [f"tiny-sae#{FEATURE}"]


def test_a_full_queue_gets_a_friendly_busy_message(handlers):
    backend = handlers.service.backend
    backend.max_waiting, saved = 0, backend.max_waiting
    try:
        with pytest.raises(gr.Error, match="busy"):
            list(handlers.respond("hi", None, [], 0, 1, 4, 0, None))
    finally:
        backend.max_waiting = saved
    assert "try again" in BUSY


def test_the_model_never_reads_the_marks_the_page_adds():
    from ui.handlers import FAILED, STOPPED, for_model

    chat = [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "once upon" + STOPPED},
        {"role": "user", "content": "go on" + STOPPED},
        {"role": "assistant", "content": "a time" + FAILED},
    ]
    assert [m["content"] for m in for_model(chat)] == [
        "tell me a story",
        "once upon",
        "go on" + STOPPED,  # what the visitor typed is theirs
        "a time",
    ]


def test_regenerate_drops_the_last_exchange():
    steered = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "b"},
    ]
    baseline = [*steered[:3], {"role": "assistant", "content": "c"}]
    message, before = without_last_exchange({"steered": steered, "baseline": baseline})
    assert message == "two" and before == {"steered": steered[:2], "baseline": baseline[:2]}
    assert without_last_exchange({"steered": [], "baseline": []})[0] == ""


def test_the_service_warnings_reach_the_visitor(handlers, monkeypatch):
    rows, chat = handlers.preset_rows(PRESET_NAME), [{"role": "user", "content": "hi"}]
    greedy = SamplingParams(temperature=0, max_new_tokens=2)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        handlers.submit(rows, chat, chat, greedy).cancel()
    assert [str(w.message) for w in shown] == []  # the page's preset names this server's model
    data = handlers.preset(rows).model_dump(mode="json")
    foreign = Preset.model_validate({**data, "model": {"id": "someone/other-model"}})
    monkeypatch.setattr(handlers, "preset", lambda _rows: foreign)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        handlers.submit(rows, chat, chat, greedy).cancel()
    (message,) = [str(w.message) for w in shown]
    assert "made for someone/other-model, but the loaded model is tiny-llama" in message
