"""Streamed text: every ending shows what was held back, stop strings (special tokens included)
and min_new_tokens, and the deltas equal the full decode for every tokenizer family."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_model, tiny_tokenizer
from tiny_tokenizers import byte_fallback_tokenizer, byte_level_tokenizer, metaspace_tokenizer
from transformers import AutoTokenizer

import steering
from steering.engine import Engine
from steering.models import SteerableModel, find_layers
from steering.requests import build_request
from steering.sampling import SamplingParams
from steering.textstream import _MAX_RUN, _MAX_WAIT, TextStream, special_tokens

DEMO_MODEL = Path(steering.__file__).parent / "demo" / "files" / "model"
FAMILIES = {
    "byte_level": byte_level_tokenizer,
    "metaspace": metaspace_tokenizer,
    "byte_fallback": byte_fallback_tokenizer,
    "word_level": tiny_tokenizer,
    "demo": lambda: AutoTokenizer.from_pretrained(DEMO_MODEL),
}
_built: dict[str, object] = {}
# The longest decode window: the tokens before the newest ones (the context), and the newest:
# one token, or those that wait for a character's bytes (at most _MAX_WAIT + 1), or a run of
# ByteFallback byte tokens (at most _MAX_RUN).
MAX_WINDOW = {"metaspace": 2, "byte_level": 2 * (_MAX_WAIT + 1), "byte_fallback": 2 * _MAX_RUN}


def family(name: str):
    if name not in _built:
        _built[name] = FAMILIES[name]()
    return _built[name]


def stream_text(tok, ids, stop=(), can_stop=lambda n: True) -> str:
    stream = TextStream(tok, stop)
    deltas = []
    for n, i in enumerate(ids, start=1):
        deltas.append(stream.push(i, can_stop=can_stop(n)))
    deltas.append(stream.flush())
    assert "".join(deltas) == stream.text
    return "".join(deltas)


# ---- through the engine, with a model that says what the test scripts ----


def scripted_engine(words: str) -> Engine:
    """An engine whose model says ``words`` (one token each), whatever the prompt."""
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    layers, template = find_layers(model)
    script = tok.convert_tokens_to_ids(words.split())
    calls = iter(range(10_000))

    def say(module, inputs, logits):  # one call per forward: prefill, then one per step
        forced = torch.full_like(logits, -1e4)
        forced[..., script[min(next(calls), len(script) - 1)]] = 1e4
        return forced

    model.get_output_embeddings().register_forward_hook(say)
    return Engine(SteerableModel(model, tok, layers, template))


def reply(words: str, cancel_after: int | None = None, **sampling):
    """(text, finish_reason, completion_tokens) of a greedy reply by a model that says ``words``."""
    engine = scripted_engine(words)
    params = SamplingParams(temperature=0, **{"max_new_tokens": 10, **sampling})
    request = build_request(engine.model, "hello", None, params)
    events = []
    for event in engine.stream(request):
        events.append(event)
        if len(events) == cancel_after:
            engine.cancel(request.id)
    last = events[-1]
    return "".join(e.delta for e in events), last.finish_reason, last.completion_tokens


@pytest.mark.parametrize(
    "words, sampling, cancel_after, expected",
    [
        ("the golden <eos>", {}, None, ("the golden", "stop", 3)),
        ("the golden the", {"max_new_tokens": 2}, None, ("the golden", "length", 2)),
        ("the golden the the", {}, 2, ("the golden", "cancelled", 2)),
        ("the golden gate bridge", {}, None, ("the ", "stop", 3)),
    ],
    ids=["eos", "length", "cancel", "stop"],
)
def test_every_ending_shows_the_held_back_text(words, sampling, cancel_after, expected):
    assert reply(words, cancel_after, stop=("golden gate",), **sampling) == expected


def test_a_stop_string_naming_a_special_token_stops_at_that_token():
    assert reply("the golden <|end|> gate bridge", stop=("<|end|>",)) == ("the golden", "stop", 3)
    # a special token that is not a stop string shows no text and ends nothing
    assert reply("the <|end|> golden", max_new_tokens=3) == (
        "the golden",
        "length",
        3,
    )


def test_min_new_tokens_holds_off_stop_strings():
    words = "the golden gate the golden gate the"
    assert reply(words, stop=("gate",)) == ("the golden ", "stop", 3)
    assert reply(words, stop=("gate",), min_new_tokens=6) == (
        "the golden gate the golden ",
        "stop",
        6,
    )
    assert reply(words, stop=("gate",), min_new_tokens=7) == (
        "the golden gate the golden gate the the the the",
        "length",
        10,
    )


def test_min_new_tokens_holds_off_a_stop_token():
    words = "the <|end|> golden <|end|> gate"
    assert reply(words, stop=("<|end|>",), min_new_tokens=3) == ("the golden", "stop", 4)


# ---- the stream alone ----


def test_flush_returns_the_held_back_text_once():
    tok = tiny_tokenizer()
    stream = TextStream(tok, stop=("golden gate",))
    the, golden = tok.convert_tokens_to_ids(["the", "golden"])
    assert [stream.push(the), stream.push(golden)] == ["the", " "]
    assert stream.flush() == "golden"
    assert stream.flush() == "" and not stream.stopped


def test_a_stop_string_that_completes_after_the_min_boundary_counts():
    """Stop strings count from the first push with can_stop=True on, if they end after it."""
    tok = tiny_tokenizer()
    ids = tok("the golden gate the golden gate", add_special_tokens=False)["input_ids"]
    # "golden" came before the boundary, "gate" after: the stop string counts
    assert stream_text(tok, ids, ("golden gate",), lambda n: n >= 3) == "the "
    # a stop string wholly before the boundary is text; the next one ends the reply
    assert stream_text(tok, ids, ("golden gate",), lambda n: n >= 4) == "the golden gate the "
    assert stream_text(tok, ids, ("golden gate",), lambda n: False) == (
        "the golden gate the golden gate"
    )


class PieceTokenizer:
    """Each id decodes to a fixed piece of text; id 0 is a special token "<s>"."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.all_special_ids = [0]

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 0))


def test_the_stop_string_that_ends_first_wins():
    tok = PieceTokenizer(["<s>", "the golden gate", " bridge"])
    assert stream_text(tok, [1, 2], ("gate", "golden")) == "the "
    assert stream_text(tok, [1, 2], ("golden", "gate")) == "the "
    # two that end together: cut where the longer starts, so neither is shown
    assert stream_text(tok, [1, 2], ("gate", "golden gate")) == "the "


def test_special_stop_token_keeps_the_text_before_it():
    tok = PieceTokenizer(["<s>", "the golden", " gate"])
    stream = TextStream(tok, stop=("<s>", "golden gate"))
    assert stream.push(1) == "the "  # "golden" could start "golden gate"
    assert stream.push(0) == "golden" and stream.stopped
    assert stream.push(2) == "" and stream.flush() == ""


def test_metaspace_keeps_the_space_after_a_special_token():
    tok = metaspace_tokenizer()
    ids = tok("the cat is big", add_special_tokens=False)["input_ids"]
    ids += tok.convert_tokens_to_ids(["<|end|>"])
    ids += tok("the golden gate", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "the cat is big the golden gate"
    assert stream_text(tok, ids) == "the cat is big the golden gate"


@pytest.mark.parametrize("name", ["byte_level", "byte_fallback", "metaspace"])
def test_cost_per_token_stays_constant(name):
    """Every decode covers a short window, even in long runs of bytes that never make text."""
    tok = FAMILIES[name]()
    windows: list[int] = []
    decode = tok.decode

    def recording(ids, **kwargs):
        windows.append(len(ids))
        return decode(ids, **kwargs)

    tok.decode = recording
    rng = random.Random(0)
    partial = [i for i in range(len(tok)) if "\ufffd" in decode([i])] or [0]
    newline = tok.convert_tokens_to_ids("<0x0A>" if name == "byte_fallback" else "<eos>")
    ids = [rng.randrange(len(tok)) for _ in range(2000)] + [partial[0]] * 500
    ids += [rng.choice(partial) for _ in range(500)] + [newline] * 300
    text = stream_text(tok, ids)
    windows_of_the_stream = windows[:]
    assert text == decode(ids, skip_special_tokens=True)
    assert len(windows_of_the_stream) <= 3 * len(ids) + 3
    assert max(windows_of_the_stream) <= MAX_WINDOW[name]


# ---- the invariant: streamed text == decode(skip_special_tokens=True), every family ----


def token_ids(tok):
    """Random ids, rich in special tokens and in tokens that hold part of a character."""
    specials = sorted(special_tokens(tok))
    partial = [i for i in range(len(tok)) if "\ufffd" in tok.decode([i])] or specials
    any_id = st.integers(0, len(tok) - 1)
    return st.lists(st.one_of(any_id, st.sampled_from(specials), st.sampled_from(partial)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_streamed_text_equals_the_full_decode(name, data):
    tok = family(name)
    ids = data.draw(token_ids(tok).map(lambda ids: ids[:40]))
    assert stream_text(tok, ids) == tok.decode(ids, skip_special_tokens=True)


def cut_at_first_stop(text: str, stops, after: int = -1) -> str:
    """The text up to the stop string that ends first (past ``after``), as the stream cuts."""
    ends = []
    for s in stops:
        at = text.find(s, max(0, after - len(s) + 1))
        if at != -1:
            ends.append((at + len(s), at))
    return text[: min(ends)[1]] if ends else text


@pytest.mark.parametrize("name", sorted(FAMILIES))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_streamed_text_is_the_full_decode_cut_at_the_first_stop(name, data):
    tok = family(name)
    ids = data.draw(token_ids(tok).map(lambda ids: ids[:40]))
    full = tok.decode(ids, skip_special_tokens=True)
    stops = []
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, max(0, len(full) - 1)))
        stops.append(full[start : start + data.draw(st.integers(1, 6))] or "x")
    assert stream_text(tok, ids, stops) == cut_at_first_stop(full, stops)


@pytest.mark.parametrize("name", ["demo", "metaspace", "word_level"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_stop_strings_count_only_when_they_end_after_the_min_boundary(name, data):
    tok = family(name)
    ids = data.draw(token_ids(tok).map(lambda ids: ids[:30]))
    full = tok.decode(ids, skip_special_tokens=True)
    start = data.draw(st.integers(0, max(0, len(full) - 1)))
    stops = [full[start : start + data.draw(st.integers(1, 8))] or "x"]
    low = data.draw(st.integers(1, len(ids) + 1))
    boundary = len(tok.decode(ids[: low - 1], skip_special_tokens=True))
    got = stream_text(tok, ids, stops, lambda n: n >= low)
    assert got == cut_at_first_stop(full, stops, after=boundary)
