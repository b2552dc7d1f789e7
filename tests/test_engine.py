"""The decode loop: A/B in one batch, common random numbers, continuous batching, cancellation."""

from __future__ import annotations

import pytest
import torch
from random_saes import random_sae
from tiny_models import HIDDEN, tiny_model, tiny_tokenizer

from steering import FeatureEdit, SteeringPlan, clamp, count_hooks
from steering.engine import Engine
from steering.errors import RequestError
from steering.limits import Limits
from steering.models import SteerableModel, find_layers
from steering.requests import build_request, build_sweep_request
from steering.sampling import SamplingParams

VOCAB = 128  # the tiny models' vocabulary
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=16, seed=7)
GREEDY = SamplingParams(temperature=0, max_new_tokens=16)


def make_engine(arch="llama", **kwargs) -> Engine:
    model = tiny_model(arch)
    layers, template = find_layers(model)
    return Engine(SteerableModel(model, tiny_tokenizer(), layers, template), **kwargs)


def make_request(engine, messages, plan=None, sampling=None, **kwargs):
    """A request built with the engine's model and limits."""
    return build_request(engine.model, messages, plan, sampling, limits=engine.limits, **kwargs)


def tokens(events, row=0):
    return [e.token_id for e in events if e.row == row and e.finish_reason != "cancelled"]


def strong_plan(layer=1, value=25.0, **edit):
    return SteeringPlan(
        (FeatureEdit(random_sae(HIDDEN, 32, layer=layer), 3, "clamp", value, **edit),)
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ab_baseline_row_equals_solo_baseline_with_sampling(arch):
    engine = make_engine(arch)
    compare = list(
        engine.stream(
            make_request(engine, "hello how are you", strong_plan(), SAMPLED, compare=True)
        )
    )
    solo = list(engine.stream(make_request(engine, "hello how are you", None, SAMPLED)))
    assert tokens(compare, row=1) == tokens(solo)
    assert tokens(compare, row=0) != tokens(compare, row=1)  # the steering changed the reply
    assert count_hooks(engine.model.model) == 0


def test_zero_strength_compare_gives_identical_rows():
    engine = make_engine()
    plan = strong_plan().scaled(0)
    events = list(
        engine.stream(make_request(engine, "the cat is big", plan, SAMPLED, compare=True))
    )
    assert tokens(events, 0) == tokens(events, 1) and len(tokens(events, 0)) > 1


def test_same_seed_same_reply_different_seed_different_reply():
    engine = make_engine()
    run = lambda seed: tokens(
        engine.stream(
            make_request(
                engine,  # noqa: E731
                "hello",
                None,
                SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed),
            )
        )
    )
    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_greedy_matches_transformers_generate(arch):
    engine = make_engine(arch)
    req = make_request(engine, "hello how are you", None, GREEDY)
    ids = torch.tensor([req.rows[0].prompt_ids])
    ours = tokens(engine.stream(req))
    reference = engine.model.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=16,
        min_new_tokens=16,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert ours == reference[0, ids.shape[1] :].tolist()


def test_steering_reaches_generated_tokens():
    """A clamp on generated positions only: identical prefill logits, different decode logits."""
    engine = make_engine()
    seen: list[torch.Tensor] = []
    forward = engine._forward

    def recording(*args, **kwargs):
        logits = forward(*args, **kwargs)
        seen.append(logits.clone())
        return logits

    engine._forward = recording
    plan = strong_plan(positions="generated")
    list(engine.stream(make_request(engine, "hello how are you", plan, GREEDY, compare=True)))
    prefill, first_step = seen[0], seen[1]
    assert torch.equal(prefill[0], prefill[1])
    assert (first_step[0] - first_step[1]).abs().max() > 1e-3


def test_closing_the_stream_cancels_and_removes_hooks():
    engine = make_engine()
    stream = engine.stream(make_request(engine, "hello", strong_plan(), GREEDY, compare=True))
    next(stream), next(stream)
    stream.close()
    assert engine.live == [] and count_hooks(engine.model.model) == 0
    # the next request is unaffected by the cancelled one
    after = tokens(engine.stream(make_request(engine, "hello", None, GREEDY)))
    assert after == tokens(make_engine().stream(make_request(make_engine(), "hello", None, GREEDY)))


def test_requests_joining_a_running_batch_get_their_solo_replies():
    engine = make_engine()
    prompts = ["hello", "the golden gate bridge is big", "how are you", "i am fine the cat"]
    plans = [None, strong_plan(), strong_plan(layer=2, value=-8.0), strong_plan(positions="prompt")]
    params = [
        SamplingParams(temperature=t, max_new_tokens=n, seed=s)
        for t, n, s in ((0, 10, 0), (1.0, 14, 1), (0.7, 6, 2), (1.3, 12, 3))
    ]
    solo = [
        tokens(engine.stream(make_request(engine, p, plan, sp)))
        for p, plan, sp in zip(prompts, plans, params)
    ]
    requests = [make_request(engine, p, plan, sp) for p, plan, sp in zip(prompts, plans, params)]
    events = engine.admit(requests[:2])
    for i in range(2, 4):  # the others arrive while the first two decode
        events += engine.step() + engine.step()
        events += engine.admit([requests[i]])
    while engine.live:
        events += engine.step()
    for request, expected in zip(requests, solo):
        got = [e.token_id for e in events if e.request_id == request.id]
        assert got == expected
    assert count_hooks(engine.model.model) == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(temperature=-0.5), "temperature -0.5 must be a number in"),
        (dict(top_p=0.0), r"top_p 0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p 1.5 must be in \(0, 1\]"),
        (dict(max_new_tokens=0), r"max_new_tokens 0 must be an integer in \[1, 64\]"),
        (dict(max_new_tokens=65), r"max_new_tokens 65 must be an integer in \[1, 64\]"),
        (dict(top_k=-1), "top_k -1"),
        (dict(temperature=float("nan")), "temperature nan"),
        (dict(stop=("",)), "non-empty strings"),
    ],
)
def test_bad_sampling_values_are_refused_and_the_engine_keeps_serving(bad, message):
    engine = make_engine(limits=Limits(max_new_tokens=64))
    with pytest.raises(RequestError, match=message):
        make_request(engine, "hello", None, SamplingParams(**{"max_new_tokens": 16, **bad}))
    assert len(tokens(engine.stream(make_request(engine, "hello", None, GREEDY)))) == 16


def test_prompt_length_limit():
    engine = make_engine(limits=Limits(max_prompt_tokens=5))
    with pytest.raises(RequestError, match="the prompt has 8 tokens, at most 5"):
        make_request(engine, "hello how are you", None, GREEDY)


def test_stop_strings_and_eos_end_a_row():
    engine = make_engine()
    free = engine.stream(
        make_request(engine, "hello", None, SamplingParams(temperature=0, max_new_tokens=30))
    )
    text = "".join(e.delta for e in free)
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    events = list(
        engine.stream(
            make_request(
                engine,
                "hello",
                None,
                SamplingParams(temperature=0, max_new_tokens=30, stop=(stop,)),
            )
        )
    )
    assert events[-1].finish_reason == "stop"
    reply = "".join(e.delta for e in events)
    assert stop not in reply and text.startswith(reply)


def test_clamp_with_kv_cache_generation_differs_from_prompt_only():
    engine = make_engine()
    run = lambda plan: tokens(
        engine.stream(make_request(engine, "hello how are you", plan, GREEDY))
    )  # noqa: E731
    sae = random_sae(HIDDEN, 32, layer=1)
    every = run(clamp(sae, 3, 25.0))
    prompt_only = run(clamp(sae, 3, 25.0, positions="prompt"))
    baseline = run(None)
    assert every != baseline and every != prompt_only


def test_multi_turn_compare_keeps_separate_histories():
    engine = make_engine()
    steered_history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "the golden gate bridge"},
        {"role": "user", "content": "how are you"},
    ]
    baseline_history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "i am fine"},
        {"role": "user", "content": "how are you"},
    ]
    req = make_request(
        engine,
        steered_history,
        strong_plan(),
        SAMPLED,
        compare=True,
        baseline_messages=baseline_history,
    )
    assert req.rows[0].prompt_ids != req.rows[1].prompt_ids
    events = list(engine.stream(req))
    solo_baseline = tokens(engine.stream(make_request(engine, baseline_history, None, SAMPLED)))
    assert tokens(events, row=1) == solo_baseline


def test_min_new_tokens_keeps_eos_away():
    engine = make_engine()
    eos = engine.tokenizer.eos_token_id
    free = tokens(engine.stream(make_request(engine, "hello", None, GREEDY)))
    # make EOS the model's favourite token, so only min_new_tokens can hold it off
    engine.model.model.lm_head.bias = torch.nn.Parameter(
        torch.zeros(engine.model.model.config.vocab_size)
    )
    engine.model.model.lm_head.bias.data[eos] = 100.0
    assert tokens(engine.stream(make_request(engine, "hello", None, GREEDY))) == [eos]
    held = SamplingParams(temperature=0, max_new_tokens=6, min_new_tokens=4)
    events = list(engine.stream(make_request(engine, "hello", None, held)))
    assert [e.token_id for e in events][-1] == eos and len(events) == 5
    assert eos not in [e.token_id for e in events][:4] and len(free) == 16


def test_steering_is_prepared_once_per_admission_and_never_per_step(monkeypatch):
    import steering.engine as engine_module

    calls = []
    real = engine_module.prepare
    monkeypatch.setattr(
        engine_module, "prepare", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k)
    )
    engine = make_engine()
    events = engine.stream(make_request(engine, "hello", strong_plan(), GREEDY, compare=True))
    first_two = [next(events), next(events), next(events)]  # both rows' first token, then one
    assert [e.row for e in first_two] == [0, 1, 0] and calls == [2]  # built once, for 2 rows
    joined = make_request(engine, "the cat", strong_plan(value=5.0), GREEDY)
    engine.admit([joined])  # a request joins: one build for the whole new batch
    assert calls == [2, 3]
    engine.cancel(joined.id)
    engine.step()  # a row leaves: its tables are taken away, nothing is rebuilt
    for _ in range(3):
        engine.step()
    assert calls == [2, 3] and len(engine.live) == 2
    events.close()


# ---- strength sweeps ----


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sweep_rows_equal_solo_requests_at_each_strength(arch):
    """Row i of a sweep is token for token the request steered at scales[i] alone with the
    same seed: the rows share their random numbers, as a compare's do."""
    engine = make_engine(arch)
    base = strong_plan(value=6.0)
    scales = [0.0, 1.0, 2.0, 4.0, 4.0]  # duplicates are allowed
    plans = [base.scaled(s) for s in scales]
    sweep = list(engine.stream(build_sweep_request(engine.model, "the cat", plans, SAMPLED)))
    rows = [tokens(sweep, row=i) for i in range(len(scales))]
    solo = [tokens(engine.stream(make_request(engine, "the cat", plan, SAMPLED))) for plan in plans]
    assert rows == solo
    unsteered = tokens(engine.stream(make_request(engine, "the cat", None, SAMPLED)))
    assert rows[0] == unsteered and len(unsteered) > 1
    assert len({tuple(r) for r in rows}) >= 3  # the strengths really differ
    assert rows[3] == rows[4]
    assert count_hooks(engine.model.model) == 0


def test_an_empty_sweep_is_refused():
    engine = make_engine()
    with pytest.raises(RequestError, match="at least one row") as caught:
        build_sweep_request(engine.model, "the cat", [], SAMPLED)
    assert caught.value.param == "sweep"
