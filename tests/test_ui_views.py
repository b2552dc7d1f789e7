"""The page's two views without a browser: the strength sweep (one request, rows equal to a
direct ``Service.sweep``) and what lights up (numbers equal to ``Service.activations``)."""

from __future__ import annotations

import dataclasses
import html
import re
import time
from types import SimpleNamespace

import gradio as gr
import pytest
from live_server import FEATURE, LABELS, PRESET_NAME, tiny_service

from steering.serve import SamplingParams, TokenActivations
from ui.conversation import empty
from ui.features import FeatureRow
from ui.handlers import STOPPED, Handlers
from ui.lights import Lights, lights_html, steered_features
from ui.sweep import (
    Sweep,
    SweepPlan,
    cards_html,
    default_multipliers,
    feature_choice,
    parse_multipliers,
    stream,
)

SAE = "tiny-sae"
PROMPT = "hello how are you"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = tiny_service(tmp_path_factory.mktemp("views"))
    yield service
    service.close()


@pytest.fixture(scope="module")
def handlers(service):
    return Handlers(service)


@pytest.fixture
def rows(handlers):
    return handlers.preset_rows(PRESET_NAME)  # feature 3 clamped at 10 x max


class Submits:
    """Counts the requests the engine gets (each a ``backend.submit``)."""

    def __init__(self, service, monkeypatch) -> None:
        self.ids: list[int] = []
        submit = service.backend.submit

        def counted(request):
            handle = submit(request)
            self.ids.append(request.id)
            return handle

        monkeypatch.setattr(service.backend, "submit", counted)


def visitor(name: str = "visitor-1") -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)


def card_texts(cards: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'<div class="sweep-text">(.*?)</div>', cards)]


def direct_sweep(service, handlers, rows, scales, sampling) -> tuple[list[str], list[list[int]]]:
    texts, tokens = [""] * len(scales), [[] for _ in scales]
    handle = service.sweep(
        [{"role": "user", "content": PROMPT}], handlers.preset(rows), scales, sampling
    )
    for event in handle:
        texts[event.row] += event.delta
        if event.token_id is not None:
            tokens[event.row].append(event.token_id)
    return texts, tokens


# ---- the sweep ----


def test_the_sweep_is_one_request_whose_rows_equal_a_direct_sweep(
    service, handlers, rows, monkeypatch
):
    """The handler's cards hold, text for text, the rows of a direct ``Service.sweep`` with the
    same seed, from one engine request; ``stream`` gives them token for token."""
    other = dataclasses.replace(rows[0], feature=5, label=LABELS[5], value=4.0)
    steering = [rows[0], other]  # the sweep takes feature 3's row alone
    scales = (0.0, 0.25, 0.5, 1.0)
    sampling = SamplingParams(temperature=0.9, top_p=1.0, max_new_tokens=12, seed=5)
    texts, tokens = direct_sweep(service, handlers, rows, scales, sampling)
    assert texts[0] != texts[-1]  # the strength shows

    submits = Submits(service, monkeypatch)
    sweep = Sweep(handlers)
    choice = feature_choice(rows[0])
    updates = list(
        sweep.run(choice, "0, 0.25, 0.5, 1x", PROMPT, "", steering, 0.9, 1.0, 12, 5, visitor())
    )
    assert len(submits.ids) == 1
    final, notice = updates[-1]
    assert notice == "" and 'data-state="done"' in final and len(updates) >= 3
    assert card_texts(final) == texts
    heads = re.findall(r'<h4 class="sweep-head">(.*?)</h4>', final)
    assert heads == ["0x (unsteered)", "0.25x", "0.5x", "1x"]
    assert "clamped at 5 × max activation" in final  # 0.5 x 10

    plan = sweep.check(choice, "0 0.25 0.5 1", PROMPT, "", steering)
    assert plan.multipliers == scales and plan.prompt == PROMPT
    assert [(e.feature, e.value) for e in plan.steering.edits] == [(FEATURE, 10.0)]
    *_, cards = stream(sweep.start(plan, sampling), plan.multipliers)
    assert [c.token_ids for c in cards] == tokens
    assert [c.text for c in cards] == texts
    assert len({c.request_id for c in cards}) == 1
    assert {c.finish for c in cards} <= {"stop", "length"}


def test_the_one_x_row_is_the_reply_of_that_feature_alone(service, handlers, rows):
    """The sweep of a feature is the steering restricted to its row: the 1x row equals a solo
    request steered by that row only, with the same seed."""
    other = dataclasses.replace(rows[0], feature=5, label=LABELS[5], value=4.0)
    sampling = SamplingParams(temperature=0.9, top_p=1.0, max_new_tokens=12, seed=11)
    texts, _ = direct_sweep(service, handlers, rows, (1.0,), sampling)
    plan, _ = service.plan(handlers.preset(rows))
    solo = service.submit([{"role": "user", "content": PROMPT}], plan, sampling)
    assert "".join(e.delta for e in solo) == texts[0]
    updates = list(
        Sweep(handlers).run(
            feature_choice(rows[0]), "1", PROMPT, "", [other, rows[0]], 0.9, 1.0, 12, 11, visitor()
        )
    )
    assert card_texts(updates[-1][0]) == texts


@pytest.mark.parametrize(
    "typed,words",
    [
        ("0, 1, abc", ["“abc”", "is not a number", "at most 8", "between -10 and 10"]),
        ("0, 1, inf", ["“inf”", "is not a number"]),
        ("0 1 2 3 4 5 6 7 8", ["9 multipliers", "at most 8", "max_sweep_rows"]),
        ("0, 20", ["“20” is too large", "at 10 × max activation", "at most 100", "-10 to 10"]),
        ("", ["No multipliers", "0, 0.25, 0.5, 1, 2, 4"]),
        ("1," * 150, ["300 characters", "at most 200"]),
    ],
)
def test_bad_multipliers_name_the_value_and_the_bounds(service, rows, typed, words):
    with pytest.raises(ValueError) as caught:
        parse_multipliers(typed, rows[0], service.limits)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_refused_sweep_queues_nothing_and_says_why(service, handlers, rows, monkeypatch):
    submits = Submits(service, monkeypatch)
    sweep = Sweep(handlers)
    choice = feature_choice(rows[0])

    def notice(*inputs) -> str:
        (update,) = list(sweep.run(*inputs, 0.7, 1.0, 8, 0, visitor()))
        return update[1]

    assert "“-12”" in notice(choice, "0, -12", PROMPT, "", rows)
    zero = [dataclasses.replace(rows[0], value=0.0)]
    assert "has strength 0" in notice(choice, "0, 1", PROMPT, "", zero)
    assert "no feature to sweep" in notice(choice, "0, 1", PROMPT, "", [])
    assert "Pick one of the steering's features" in notice("tiny-sae#9", "1", PROMPT, "", rows)
    long = "x" * (service.limits.max_message_chars + 1)
    assert "The prompt is too long" in notice(choice, "1", long, "", rows)
    assert submits.ids == []


def test_the_prompt_is_the_box_else_the_message_else_a_suggestion(handlers, rows):
    sweep, choice = Sweep(handlers), feature_choice(rows[0])
    assert sweep.check(choice, "1", "mine", "typed", rows).prompt == "mine"
    assert sweep.check(choice, "1", " ", "typed", rows).prompt == "typed"
    assert sweep.check(choice, "1", "", "", rows).prompt == handlers.about.suggested_prompts[0]


def test_the_feature_box_follows_the_steering(handlers, rows):
    sweep = Sweep(handlers)
    off = dataclasses.replace(rows[0], on=False)
    other = dataclasses.replace(rows[0], feature=5, label=LABELS[5])
    assert sweep.choices([off, other]) == [
        (f"{LABELS[3]} (#3)", "tiny-sae#3"),
        (f"{LABELS[5]} (#5)", "tiny-sae#5"),
    ]
    assert sweep.default_choice([off, other]) == "tiny-sae#5"  # the first active one
    assert sweep.feature_box([off, other], "tiny-sae#3")["value"] == "tiny-sae#3"  # kept
    assert sweep.feature_box([other], "tiny-sae#3")["value"] == "tiny-sae#5"
    assert sweep.feature_box([], "tiny-sae#3")["value"] is None


def test_default_multipliers_fit_the_server():
    from steering.serve import Limits

    assert default_multipliers(Limits()) == "0, 0.25, 0.5, 1, 2, 4"
    assert default_multipliers(Limits(max_sweep_rows=3)) == "0, 0.25, 0.5"
    strong = FeatureRow(ref=SAE, feature=3, label="x", value=50.0)
    assert default_multipliers(Limits(), strong) == "0, 0.25, 0.5, 1, 2"  # 2 x 50 = 100


def test_stop_ends_the_sweep_and_marks_its_rows(service, handlers, rows, monkeypatch):
    engine = service.backend.engine
    step = engine.step

    def slow():
        time.sleep(0.05)
        return step()

    monkeypatch.setattr(engine, "step", slow)
    sweep, who = Sweep(handlers), visitor("stopper")
    run = sweep.run(feature_choice(rows[0]), "0, 1, 2", PROMPT, "", rows, 0, 1.0, 200, 0, who)
    next(run)
    sweep.stop(who)
    updates = list(run)
    final = updates[-1][0]
    assert final.count("(stopped)") == 3 and 'data-state="done"' in final
    assert sweep.running == {}


def test_the_sweep_cards_escape_every_text(rows):
    plan = SweepPlan(
        dataclasses.replace(rows[0], label="<img src=x onerror=alert(1)>"),
        (0.0, 2.0),
        "<script>alert(1)</script>",
        None,  # type: ignore[arg-type]
    )
    cards = cards_html(plan, [SimpleNamespace(multiplier=m, text="${x} {{y}} </div>", finish=None)
                              for m in plan.multipliers])  # fmt: skip
    assert "<script>" not in cards and "<img" not in cards and "</div> " not in cards
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in cards
    assert "&#36;&#123;x&#125; &#123;&#123;y&#125;&#125; &lt;/div&gt;" in cards


# ---- what lights up ----


def last_conversation(handlers, rows) -> dict:
    updates = list(
        handlers.reply(
            PROMPT, empty(), rows, SamplingParams(temperature=0, max_new_tokens=10), "lights"
        )
    )
    return updates[-1][1]


def test_the_view_holds_the_numbers_of_service_activations(service, handlers, rows):
    conversation = last_conversation(handlers, rows)
    views = Lights(handlers).read(conversation, rows)
    assert [v.pane for v in views] == ["steered", "baseline"]
    for view in views:
        messages = conversation[view.pane][-2:]
        direct = service.activations(messages, SAE, features=[FEATURE], top_k=5)
        assert view.ref == SAE and view.steered == (FEATURE,)
        assert tuple(t.text for t in view.tokens) == direct.tokens
        most = direct.max_activation[FEATURE]
        for t, token in enumerate(view.tokens):
            value = direct.features[FEATURE][t]
            assert token.prompt == (t < direct.reply_start)
            assert token.intensity == (min(1.0, value / most) if value > 0 else 0.0)
            assert [(f.feature, f.activation) for f in token.top] == list(direct.top[t])
            assert [f.fraction for f in token.top] == [
                min(1.0, v / direct.max_activation[f]) for f, v in direct.top[t]
            ]
            assert [f.label for f in token.top] == [
                LABELS.get(f, f"feature {f}") for f, _ in direct.top[t]
            ]
        assert any(token.intensity > 0 for token in view.tokens)
    page = Lights(handlers).show(conversation, rows)[0]
    shown = [float(x) for x in re.findall(r'data-intensity="([0-9.]+)"', page)]
    expected = [round(t.intensity, 3) for v in views for t in v.tokens]
    assert shown == pytest.approx(expected, abs=5e-4)
    # each token's top features: an "Add" button each, but the feature already steered
    listed = [f.feature for v in views for t in v.tokens for f in t.top]
    added = [int(f) for f in re.findall(r'data-choice="tiny-sae#(\d+)"', page)]
    assert added == [f for f in listed if f != FEATURE] and added
    assert page.count("in the steering") == listed.count(FEATURE)


def test_without_steering_the_shade_is_each_tokens_strongest_feature(service, handlers, rows):
    conversation = last_conversation(handlers, rows)
    (view, _) = Lights(handlers).read(conversation, [])
    assert view.steered == ()
    direct = service.activations(conversation["steered"][-2:], SAE, top_k=5)
    in_view = {}
    for row in direct.top:
        for f, v in row[:1]:
            in_view[f] = max(in_view.get(f, 0.0), v)
    for t, token in enumerate(view.tokens):
        if direct.top[t]:
            f, v = direct.top[t][0]
            most = direct.max_activation.get(f) or in_view[f]
            assert token.intensity == min(1.0, v / most)
            assert token.strongest.feature == f


def test_a_stopped_reply_is_read_without_its_mark(service, handlers, rows):
    conversation = last_conversation(handlers, rows)
    marked = {
        pane: [*chat[:-1], {**chat[-1], "content": chat[-1]["content"] + STOPPED}]
        for pane, chat in conversation.items()
    }
    plain = Lights(handlers).read(conversation, rows)
    again = Lights(handlers).read(marked, rows)
    assert [t.text for t in plain[0].tokens] == [t.text for t in again[0].tokens]


def test_no_reply_yet_says_so(handlers, rows):
    assert Lights(handlers).show(empty(), rows) == (
        "",
        "There is no reply yet: send a message first.",
    )
    assert "no reply yet" in Lights(handlers).show(None, None)[1]


def test_add_from_the_view_is_the_search_boxs_add(service, handlers, rows):
    layout = {"rev": 4, "rows": rows}
    lights = Lights(handlers)
    event = gr.EventData(None, {"index": 0, "value": f"{SAE}#5"})
    new_rows, new_layout, status, preset, notice = lights.add(rows, layout, event)
    expected = handlers.add(f"{SAE}#5", rows, layout)
    assert (new_rows, new_layout, status, preset) == expected
    assert new_rows[-1].feature == 5 and new_rows[-1].label == LABELS[5] and notice == status
    for bad in (
        None,
        {"value": {"path": "/etc/passwd"}},
        {"value": "x" * 10_000},
        {"value": "#99"},
    ):
        out = lights.add(rows, layout, gr.EventData(None, bad))
        assert out[0] == rows and out[2].startswith("Cannot add that feature"), out[2]


def test_the_view_escapes_every_text(service, handlers):
    """Token texts and labels reach the page escaped, template characters included."""
    found = TokenActivations(
        tokens=("<bos>", "<script>alert(1)</script>", "${x}", "`y`"),
        token_ids=(0, 1, 2, 3),
        top=((), ((5, 2.0),), ((5, 1.0),), ()),
        features={5: (0.0, 2.0, 1.0, 0.0)},
        max_activation={},
        reply_start=1,
    )
    handlers.labels[(SAE, 5)] = "<img src=x onerror=alert(1)>"
    try:
        view = Lights(handlers).pane_view("steered", SAE, (5,), found)
        page = lights_html([view])
    finally:
        del handlers.labels[(SAE, 5)]
    assert [t.intensity for t in view.tokens] == [0.0, 1.0, 0.5, 0.0]  # of the max in view
    assert "<script>" not in page and "<img" not in page and "${" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&#36;&#123;x&#125;" in page
    assert "&#96;y&#96;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_sae_read_is_that_of_the_steering(service, rows):
    assert steered_features(service, rows) == (SAE, (FEATURE,))
    off = dataclasses.replace(rows[0], on=False)
    assert steered_features(service, [off]) == (SAE, (FEATURE,))
    assert steered_features(service, []) == (SAE, ())


def test_a_long_prompt_shows_its_last_tokens_only(handlers):
    found = TokenActivations(
        tokens=tuple(f" w{i}" for i in range(110)),
        token_ids=tuple(range(110)),
        top=((),) * 110,
        features={3: (1.0,) * 110},
        max_activation={3: 2.0},
        reply_start=100,
    )
    view = Lights(handlers).pane_view("steered", SAE, (3,), found)
    page = lights_html([view])
    assert page.count('class="lit lit-prompt"') == 64 and page.count('class="lit"') == 10
    assert 'title="36 earlier tokens"' in page and "> w35<" not in page and "> w36<" in page
    assert page.count('class="lit-detail"') == 74
    assert all(t.intensity == 0.5 for t in view.tokens)
