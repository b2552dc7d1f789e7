"""The vLLM backend as a backend: isolation inside one batch, prefix caching keyed by the
steering, shared random numbers for a compare, cancellation, sampling settings, and the
refusals and self-test that keep a silent failure from reaching a visitor."""

from __future__ import annotations

import pytest
from random_saes import random_sae
from steered import reference, run, start_world

from steering.demo import MODEL_DIR, load_demo
from steering.errors import PlanError, SteeringError
from steering.plan import FeatureEdit, SteeringPlan
from steering.requests import Event, Request, Row, build_request, collect, encode_chat
from steering.sampling import SamplingParams
from steering.vllm.backend import self_test
from steering.vllm.wire import EXTRA_ARGS_KEY, cache_salt, plan_to_wire

LOGPROBS = SamplingParams(temperature=0, max_new_tokens=12, logprobs=5)
LONG = "the golden gate bridge is big and red and the fog is on the sea " * 4


@pytest.fixture(scope="module")
def world():
    model, demo = load_demo()
    saes = {"demo": demo, "relu": random_sae(model.hidden_size, 64, 2, seed=1, always_on=(3,))}
    world = start_world(model, str(MODEL_DIR), saes, slots=4, block_size=32)
    yield world
    world.close()


def clamp(world, value: float = 40.0, **kw) -> SteeringPlan:
    return SteeringPlan((FeatureEdit(world.saes["relu"], 3, "clamp", value, **kw),))


def logprobs(events: list[Event], row: int) -> list:
    return [(e.token_id, e.logprob, e.top_logprobs) for e in events if e.row == row]


def test_an_unsteered_row_is_bit_identical_whether_or_not_its_batch_mate_is_steered(world):
    a, b = world.prompts
    _, together = run(world.vllm, [(a, clamp(world)), (b, None)], LOGPROBS)
    _, alone = run(world.vllm, [(b, None)], LOGPROBS)
    assert logprobs(together, 1) == logprobs(alone, 0)  # token ids and log-probabilities
    assert logprobs(together, 0) != logprobs(alone, 0)


def test_a_request_that_joins_mid_decode_leaves_the_running_row_as_it_was(world):
    a, b = world.prompts
    sampling = SamplingParams(temperature=0, max_new_tokens=24, logprobs=2)
    first = iter(world.vllm.submit(Request((Row(a, None),), sampling)))
    events = [next(first)]  # the first row is decoding when the second arrives
    second = world.vllm.submit(Request((Row(b, clamp(world)),), sampling))
    events += list(first)
    steered = list(second)
    _, solo = run(world.vllm, [(a, None)], sampling)
    assert logprobs(events, 0) == logprobs(solo, 0)
    assert [e.token_id for e in steered] == reference(world.model, b, clamp(world), 24)


def test_prefix_caching_never_shares_kv_across_steerings(world):
    prompt = encode_chat(world.model.tokenizer, LONG)
    plan = SteeringPlan((FeatureEdit(world.saes["relu"], 9, "add", 80.0, positions="prompt"),))
    plain, steered = reference(world.model, prompt, None), reference(world.model, prompt, plan)
    assert plain != steered
    for order in ((plan, None), (None, plan), (plan, plan, None, None)):
        for p in order:
            (tokens,), _ = run(world.vllm, [(prompt, p)])
            assert tokens == (steered if p is plan else plain)


def test_a_steered_request_hits_its_own_cache_and_never_an_unsteered_one(world):
    """Straight on vLLM's engine: the salt keys the cache by steering."""
    llm = world.vllm.engine.llm
    prompt = list(encode_chat(world.model.tokenizer, "once more " + LONG))
    wire = plan_to_wire(clamp(world), world.vllm.engine._keys)
    from vllm import SamplingParams as VLLMSampling

    def cached(steering: list | None, rid: str) -> int:
        extra = {EXTRA_ARGS_KEY: steering} if steering else None
        params = VLLMSampling(temperature=0, max_tokens=1, extra_args=extra)
        inputs = {"prompt_token_ids": prompt}
        if steering:
            inputs["cache_salt"] = cache_salt(steering)
        llm.add_request(rid, inputs, params)
        found = None
        for _ in range(50):
            for out in llm.step():
                if out.request_id == rid and out.finished:
                    found = out.num_cached_tokens
            if found is not None:
                return found
        raise AssertionError("no output")

    assert cached(wire, "s1") == 0
    assert cached(None, "u1") == 0  # would reuse the steered blocks without the salt
    assert cached(wire, "s2") > 0
    assert cached(None, "u2") > 0


def test_a_zero_strength_compare_draws_the_same_random_numbers(world):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)  # no seed: one is drawn
    msgs = "tell me about the sea"
    zero = build_request(world.model, msgs, clamp(world).scaled(0), sampling, compare=True)
    replies = collect(world.vllm.submit(zero), 2)
    assert replies[0].text == replies[1].text and replies[0].completion_tokens > 0
    strong = SteeringPlan((FeatureEdit(world.saes["relu"], 9, "add", 80.0),))
    seeded = SamplingParams(temperature=1.0, max_new_tokens=16, seed=7)
    steered = build_request(world.model, msgs, strong, seeded, compare=True)
    replies = collect(world.vllm.submit(steered), 2)
    assert replies[0].text != replies[1].text  # a real steering does change the sampled text


def test_a_seeded_sampled_reply_is_reproducible(world):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16, seed=1234)
    request = lambda: build_request(world.model, "hello", clamp(world), sampling)  # noqa: E731
    first, second = (collect(world.vllm.submit(request()), 1)[0].text for _ in range(2))
    assert first == second


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=0, max_new_tokens=20, stop=("sea",)),
        SamplingParams(temperature=0, max_new_tokens=20, min_new_tokens=15),
        SamplingParams(temperature=0, max_new_tokens=20, repetition_penalty=1.5),
        SamplingParams(temperature=0, max_new_tokens=20, logprobs=3),
    ],
    ids=["stop", "min_new_tokens", "repetition_penalty", "logprobs"],
)
def test_sampling_settings_give_the_same_reply_on_both_backends(world, sampling):
    rows = [(world.prompts[1], clamp(world, 10.0)), (world.prompts[1], None)]
    _, own = run(world.own, rows, sampling)
    _, vllm = run(world.vllm, rows, sampling)
    for row in (0, 1):
        mine = [(e.token_id, e.delta, e.finish_reason) for e in own if e.row == row]
        theirs = [(e.token_id, e.delta, e.finish_reason) for e in vllm if e.row == row]
        assert mine == theirs
        if sampling.logprobs:
            for a, b in zip(logprobs(own, row), logprobs(vllm, row)):
                assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-4
                assert [t for t, _ in a[2]] == [t for t, _ in b[2]]


def test_a_cancelled_request_ends_and_leaves_nothing_running_in_vllm(world):
    sampling = SamplingParams(temperature=0, max_new_tokens=200, min_new_tokens=200)
    handle = world.vllm.submit(Request((Row(world.prompts[0], clamp(world)),), sampling))
    events = []
    for event in handle:
        events.append(event)
        if len(events) == 3:
            handle.cancel()
    assert events[-1].finish_reason == "cancelled" and len(events) < 200
    run(world.vllm, [(world.prompts[0], None)])  # a step after the cancel
    assert not world.vllm.engine.llm.has_unfinished_requests()
    assert world.vllm.health()["running_rows"] == 0


def test_an_sae_the_engine_did_not_hook_is_refused_by_name(world):
    elsewhere = random_sae(world.model.hidden_size, 16, 3, seed=9)
    plan = SteeringPlan((FeatureEdit(elsewhere, 1, "add", 5.0),))
    with pytest.raises(PlanError, match=r"blocks\.3\.hook_resid_post.*did not hook"):
        run(world.vllm, [(world.prompts[0], plan)])
    (tokens,), _ = run(world.vllm, [(world.prompts[0], None)])  # the engine goes on
    assert tokens == reference(world.model, world.prompts[0], None)


def test_more_features_at_once_than_slots_is_refused(world):
    relu = world.saes["relu"]
    plan = SteeringPlan(tuple(FeatureEdit(relu, f, "add", 1.0) for f in range(5)))
    with pytest.raises(PlanError, match="at most 4"):
        run(world.vllm, [(world.prompts[0], plan)])


class _Bypassed:
    """An engine whose steering never reaches the model: both rows get the same answer."""

    tokenizer = load_demo()[0].tokenizer

    def __init__(self) -> None:
        self.live = [1]
        self.requests: list[Request] = []

    def admit(self, requests):
        self.requests += requests

    def step(self):
        self.live = []
        request = self.requests[0]
        top = ((5, -0.1), (6, -2.0))
        return [Event(request.id, r, "x", 5, "length", 3, 1, None, -0.1, top) for r in (0, 1)]


def test_the_self_test_fails_loudly_when_steering_does_not_reach_the_model(world):
    with pytest.raises(SteeringError, match="self-test failed"):
        self_test(_Bypassed(), world.saes["demo"])
    self_test(world.vllm.engine, world.saes["demo"])  # the real engine passes
