"""Sampling: every valid setting gives its defined token, the same alone as in any batch.

The definition checked here: the repetition penalty divides positive logits and multiplies
negative ones of seen tokens; a greedy row takes the first maximum; a sampled row takes
argmax(logit / T + Gumbel(noise)) over the tokens that top-k then top-p keep, tokens ranked by
score with the lowest index first among ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_model, tiny_tokenizer

from steering.engine import Engine
from steering.models import SteerableModel, find_layers
from steering.requests import build_request
from steering.sampling import (
    NOISE_HIGH,
    NOISE_LOW,
    SamplingParams,
    _penalize,
    _scaled_and_filtered,
    pick_tokens,
)

INF = math.inf
F32_MAX = float(np.finfo(np.float32).max)

# ---- strategies ----

logit_values = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.5, 5.0, -INF, 1e-40, 1e30, -1e30, F32_MAX, -F32_MAX]),
    st.floats(-20, 20, width=32),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
noise_values = st.one_of(
    st.sampled_from([0.0, 1e-30, 1e-20, 0.5, 1 - 2**-24]),
    st.floats(0, 1, exclude_max=True, width=32),
)
temperatures = st.one_of(
    st.sampled_from([0.0, 5e-324, 1e-50, 1e-6, 1e-3, 0.7, 1.0, 5.0]),
    st.floats(0, 5),
)
top_ps = st.one_of(
    st.just(1.0),
    st.sampled_from([1e-12, 0.1, 0.5, 0.9, 1 - 1e-9]),
    st.floats(0, 1, exclude_min=True),
)
penalties = st.one_of(
    st.sampled_from([1.0, 1.0, 0.01 + 1e-9, 0.5, 1.3, 10.0]),
    st.floats(0.01, 10, exclude_min=True),
)


@st.composite
def row_params(draw, vocab: int) -> SamplingParams:
    return SamplingParams(
        temperature=draw(temperatures),
        top_p=draw(top_ps),
        top_k=draw(st.just(0) | st.sampled_from([1, vocab, vocab + 3]) | st.integers(0, vocab + 1)),
        repetition_penalty=draw(penalties),
        seed=draw(st.integers(0, 2**63 - 1)),
    ).validate()


@st.composite
def tied_row(draw, vocab: int, temperature: float) -> tuple[list[float], list[float]]:
    """Logits and noise in a few groups of tied tokens, each group with one noise value, in a
    random order. The groups lie below the best by 0 to 25 times the temperature: the distances
    at which the noise (Gumbel values span about 20) decides between them."""
    groups = draw(st.integers(1, min(4, vocab)))
    positions = st.integers(1, vocab - 1) if vocab > 1 else st.nothing()
    cuts = sorted(draw(st.sets(positions, min_size=groups - 1, max_size=groups - 1)))
    sizes = np.diff([0, *cuts, vocab])
    best = draw(st.integers(-20, 20).map(float) | logit_values)
    below = [draw(st.integers(0, 25).map(float) | st.floats(0, 25)) for _ in sizes[1:]]
    values = [best] + [best - (temperature or 1.0) * d for d in below]
    noises = [draw(noise_values) for _ in sizes]
    order = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(vocab)
    logits, noise = np.repeat(values, sizes)[order], np.repeat(noises, sizes)[order]
    return logits.tolist(), noise.tolist()


@st.composite
def free_row(draw, vocab: int) -> tuple[list[float], list[float]]:
    logits = draw(st.lists(logit_values, min_size=vocab, max_size=vocab))
    return logits, draw(st.lists(noise_values, min_size=vocab, max_size=vocab))


@st.composite
def batches(draw, max_rows: int = 5, max_vocab: int = 48):
    """(logits (B, V) float32 with a finite entry per row, noise (B, V), seen (B, V), params)."""
    rows, vocab = draw(st.integers(1, max_rows)), draw(st.integers(1, max_vocab))
    params = [draw(row_params(vocab)) for _ in range(rows)]
    drawn = [draw(tied_row(vocab, p.temperature) | free_row(vocab)) for p in params]
    logits = np.array([row for row, _ in drawn], dtype=np.float32)
    for row in logits:
        if np.isinf(row).all():
            row[draw(st.integers(0, vocab - 1))] = draw(st.floats(-1e4, 1e4, width=32))
    seen = draw(st.lists(st.booleans(), min_size=rows * vocab, max_size=rows * vocab))
    return (
        torch.from_numpy(logits),
        torch.tensor([n for _, n in drawn], dtype=torch.float32),
        torch.tensor(seen).reshape(rows, vocab),
        params,
    )


# ---- the definition, in plain Python floats ----


def penalized(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> list[float]:
    return [
        (x / penalty if x > 0 else x * penalty) if s else x
        for x, s in zip(logits.tolist(), seen.tolist())
    ]


def gumbel(noise: torch.Tensor) -> list[float]:
    u = noise.clamp(NOISE_LOW, NOISE_HIGH).tolist()  # clamped in float32, as the noise is
    return [-math.log(-math.log(x)) for x in u]


def nucleus(scaled: list[float], p: SamplingParams, slack: float):
    """(surely kept, possibly kept) token sets, the boundary blurred by ``slack`` of mass."""
    vocab = len(scaled)
    order = sorted(range(vocab), key=lambda i: (-scaled[i], i))
    k = p.top_k if 0 < p.top_k < vocab else vocab
    weights = [math.exp(scaled[i]) for i in order[:k]]
    total = math.fsum(weights)
    sure, maybe = set(), set()
    for position, token in enumerate(order[:k]):
        before = math.fsum(weights[:position]) / total
        if position == 0 or p.top_p >= 1 or before < p.top_p - slack:
            sure.add(token)
        if position == 0 or p.top_p >= 1 or before <= p.top_p + slack:
            maybe.add(token)
    return sure, maybe


def check_defined_pick(token, logits, noise, seen, p: SamplingParams) -> None:
    x = penalized(logits, seen, p.repetition_penalty)
    assert math.isfinite(logits[token].item()), (token, logits)
    if p.greedy:
        assert token == x.index(max(x))
        return
    best = max(x)
    scaled = [(v - best) / p.temperature for v in x]
    sure, maybe = nucleus(scaled, p, slack=1e-9)
    assert token in maybe, (token, maybe)
    total = [s + g for s, g in zip(scaled, gumbel(noise))]
    rival = max(total[i] for i in sure)
    # the Gumbel values are float32: within 1e-5 of these
    assert total[token] >= rival - 1e-5 - 1e-12 * abs(rival), (token, total[token], rival)


def alone(logits, noise, seen, p: SamplingParams) -> int:
    """The row picked in a batch of one, given what the engine gives such a batch."""
    return pick_tokens(
        logits[None],
        None if p.greedy else noise[None],
        [p],
        seen[None] if p.repetition_penalty != 1.0 else None,
    ).item()


# ---- properties ----


@settings(max_examples=300, deadline=None)
@given(batches())
def test_each_row_picks_the_same_token_alone_and_in_any_batch(batch):
    logits, noise, seen, params = batch
    together = pick_tokens(logits, noise, params, seen).tolist()
    for i, p in enumerate(params):
        assert together[i] == alone(logits[i], noise[i], seen[i], p), (i, params)
    reversed_ = pick_tokens(logits.flip(0), noise.flip(0), params[::-1], seen.flip(0)).tolist()
    assert reversed_[::-1] == together
    # beside rows that filter all they can, greedy or sampled
    narrow = [SamplingParams(t, top_p=1e-9, top_k=1, repetition_penalty=2.0) for t in (0, 1.0)]
    tripled = [torch.cat([x, x[:1], x[:1]]) for x in (logits, noise, seen)]
    assert pick_tokens(*tripled[:2], params + narrow, tripled[2]).tolist()[:-2] == together


@settings(max_examples=300, deadline=None)
@given(batches())
def test_each_row_picks_its_defined_token(batch):
    logits, noise, seen, params = batch
    tokens = pick_tokens(logits, noise, params, seen).tolist()
    for i, p in enumerate(params):
        check_defined_pick(tokens[i], logits[i], noise[i], seen[i], p)


@settings(max_examples=200, deadline=None)
@given(batches(), st.data())
def test_tiny_temperatures_give_a_greedy_token(batch, data):
    """As T -> 0 the sample tends to the maximum after the penalty (uniform among tied maxima):
    once (best - second best) / T exceeds the spread of the Gumbel values, it is exact."""
    logits, noise, seen, params = batch
    tiny, maxima = [], []
    for i, p in enumerate(params):
        x = penalized(logits[i], seen[i], p.repetition_penalty)
        best = max(x)
        gap = best - max((v for v in x if v < best), default=-INF)
        g = gumbel(noise[i])
        limit = gap / (max(g) - min(g) + 1)  # inf when every finite logit ties
        t = min(data.draw(st.sampled_from([1e-3, 1e-6, 1e-50, 5e-324])), limit)
        tiny.append(SamplingParams(t, p.top_p, p.top_k, p.repetition_penalty))
        maxima.append({j for j, v in enumerate(x) if v == best})
    tokens = pick_tokens(logits, noise, tiny, seen).tolist()
    greedy = [SamplingParams(0, 1.0, 0, p.repetition_penalty) for p in params]
    first = pick_tokens(logits, noise, greedy, seen).tolist()
    for token, ties, g in zip(tokens, maxima, first):
        assert token in ties
        assert len(ties) > 1 or token == g


@settings(max_examples=200, deadline=None)
@given(batches(), st.data())
def test_top_k_one_and_tiny_top_p_give_the_greedy_token(batch, data):
    logits, noise, seen, params = batch
    vocab = logits.shape[1]
    greedy = [SamplingParams(0, 1.0, 0, p.repetition_penalty) for p in params]
    expected = pick_tokens(logits, noise, greedy, seen).tolist()
    positive = [p.temperature or 1.0 for p in params]
    top_k_one = [
        SamplingParams(t, p.top_p, 1, p.repetition_penalty) for t, p in zip(positive, params)
    ]
    tiny_p = data.draw(st.sampled_from([5e-324, 1e-12]) | st.floats(1e-300, 0.5 / vocab))
    top_p_tiny = [
        SamplingParams(t, tiny_p, p.top_k, p.repetition_penalty) for t, p in zip(positive, params)
    ]
    assert pick_tokens(logits, noise, top_k_one, seen).tolist() == expected
    assert pick_tokens(logits, noise, top_p_tiny, seen).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(batches())
def test_filters_keep_the_defined_tokens_whatever_the_other_rows(batch):
    """The scores a row samples from have no NaN and no +inf; exactly the tokens that top-k and
    top-p keep are finite (up to 1e-9 of mass at the top-p boundary, and but for those a tiny
    temperature sends to -inf); and a row gets the same scores alone."""
    logits, _, seen, params = batch
    params = [
        SamplingParams(p.temperature or 1.0, p.top_p, p.top_k, p.repetition_penalty) for p in params
    ]
    scores = _penalize(logits.double(), params, seen)
    out = _scaled_and_filtered(scores.clone(), params)
    assert not out.isnan().any() and not out.isposinf().any()
    for i, p in enumerate(params):
        assert torch.equal(_scaled_and_filtered(scores[i : i + 1].clone(), [p])[0], out[i])
        x = penalized(logits[i], seen[i], p.repetition_penalty)
        scaled = [(v - max(x)) / p.temperature for v in x]
        sure, maybe = nucleus(scaled, p, slack=1e-9)
        finite = {j for j, v in enumerate(out[i].tolist()) if v > -INF}
        assert {j for j in sure if scaled[j] > -INF} <= finite <= maybe, (sure, finite, maybe)


# ---- known cases, each once wrong ----


def test_temperature_below_float32_range_picks_the_greedy_token():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    assert pick_tokens(logits, torch.full((1, 3), 0.5), [SamplingParams(1e-50)]).tolist() == [1]


def test_tiny_temperature_with_large_logits_picks_the_greedy_token():
    logits = torch.tensor([[1e33, 2e33]])
    noise = torch.tensor([[1 - 2**-24, 0.0]])  # the largest Gumbel value on the smaller logit
    assert pick_tokens(logits, noise, [SamplingParams(1e-6)]).tolist() == [1]


def test_a_row_that_filters_nothing_keeps_its_tail_beside_rows_that_filter():
    # ten tokens of probability 0.1 each: a float32 running sum passes 1.0 before the tail
    logits = torch.tensor([[0.0] * 10 + [-19.0]])
    noise = torch.tensor([[0.0] * 10 + [1 - 2**-24]])  # lets the tail token win
    free = SamplingParams(1.0, top_p=1.0, top_k=0)
    assert pick_tokens(logits, noise, [free]).tolist() == [10]
    batch = [free, SamplingParams(1.0, top_k=3), SamplingParams(1.0, top_p=0.5)]
    assert pick_tokens(logits.repeat(3, 1), noise.repeat(3, 1), batch).tolist() == [10, 0, 0]


def test_top_k_one_among_tied_maxima_picks_the_first():
    logits = torch.tensor([[0.0, 2.0, 1.0] * 300])
    noise = torch.linspace(0.01, 0.99, 900)[None]
    assert pick_tokens(logits, noise, [SamplingParams(1.0, top_k=1)]).tolist() == [1]
    assert pick_tokens(logits, noise, [SamplingParams(1.0, top_p=1e-9)]).tolist() == [1]


def test_a_penalty_below_one_on_large_logits_keeps_their_order():
    logits, seen = torch.tensor([[1e37, 2e37, 0.0]]), torch.tensor([[True, True, False]])
    for t in (0.0, 1.0):
        p = SamplingParams(t, repetition_penalty=0.01 + 1e-9)
        assert pick_tokens(logits, torch.full((1, 3), 0.5), [p], seen).tolist() == [1]


def test_sampling_without_noise_is_refused():
    with pytest.raises(ValueError, match=r"rows \[1\] sample \(temperature > 0\), but no noise"):
        pick_tokens(torch.zeros(2, 4), None, [SamplingParams(0), SamplingParams(0.7)])


# ---- through the engine ----


def make_engine() -> Engine:
    model = tiny_model("llama")
    layers, template = find_layers(model)
    return Engine(SteerableModel(model, tiny_tokenizer(), layers, template))


def reply(events, request) -> list[int]:
    return [e.token_id for e in events if e.request_id == request.id]


MIXED = [  # (prompt, settings)
    ("hello how are you", SamplingParams(0, max_new_tokens=10)),
    ("hello how are you", SamplingParams(1e-6, top_p=0.9, max_new_tokens=10, seed=1)),
    ("hello how are you", SamplingParams(1e-40, max_new_tokens=10, seed=2)),
    ("the cat is big", SamplingParams(1.0, max_new_tokens=12, seed=3)),
    ("the cat is big", SamplingParams(0.9, top_k=5, max_new_tokens=9, seed=4)),
    (
        "i am fine",
        SamplingParams(1.3, top_p=0.8, repetition_penalty=1.5, max_new_tokens=12, seed=5),
    ),
    ("i am fine", SamplingParams(5.0, top_k=1, repetition_penalty=0.5, max_new_tokens=8, seed=6)),
    ("i am fine", SamplingParams(0, repetition_penalty=0.5, max_new_tokens=8)),
    ("golden gate", SamplingParams(2.0, top_p=1e-9, min_new_tokens=4, max_new_tokens=8, seed=7)),
    ("golden gate", SamplingParams(5.0, top_k=128, top_p=1.0, max_new_tokens=11, seed=8)),
]


def test_requests_with_mixed_settings_get_their_solo_replies_in_one_batch():
    engine = make_engine()
    solo = [reply(engine.stream(r := build_request(engine.model, m, None, s)), r) for m, s in MIXED]
    requests = [build_request(engine.model, m, None, s) for m, s in MIXED]
    events = engine.admit(requests)
    while engine.live:
        events += engine.step()
    assert [reply(events, r) for r in requests] == solo
    # the limits: a tiny temperature, top_k=1 and a tiny top_p all reply as greedy does
    assert solo[1] == solo[2] == solo[0]
    assert solo[6] == solo[7]
    greedy_held = SamplingParams(0, min_new_tokens=4, max_new_tokens=8)
    assert solo[8] == reply(
        engine.stream(r := build_request(engine.model, "golden gate", None, greedy_held)), r
    )
    assert len({tuple(s) for s in solo}) >= 6  # the settings do give different replies
