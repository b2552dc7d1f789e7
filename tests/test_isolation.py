"""One request never harms another: a failing row, a prompt at the model's context, and a cancel
at every stage (waiting, admission, decoding, finished) each end exactly their own request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass, fields

import pytest
from random_saes import random_sae
from test_engine import GREEDY, make_engine, make_request, tokens
from tiny_models import HIDDEN

from steering import FeatureEdit, SteeringPlan, clamp
from steering.errors import PromptTooLong
from steering.limits import Limits
from steering.loop import EngineLoop
from steering.sae import SAE
from steering.sampling import SamplingParams

PROMPTS = ("hello how are you", "the cat is big", "golden gate bridge", "the dog and the sea")


@dataclass(eq=False)
class FaultySAE(SAE):
    """An SAE whose encode raises at prefill (T > 1) or at decode steps (T == 1)."""

    fail_on: str = "decode"

    def encode(self, x):
        if (x.shape[1] == 1) == (self.fail_on == "decode"):
            raise RuntimeError(f"injected {self.fail_on} fault")
        return super().encode(x)


def faulty_plan(fail_on: str) -> SteeringPlan:
    base = random_sae(HIDDEN, 32, layer=1, seed=9)
    sae = FaultySAE(**{f.name: getattr(base, f.name) for f in fields(SAE)}, fail_on=fail_on)
    return clamp(sae, 3, 5.0)


def plans():
    sae = random_sae(HIDDEN, 32, layer=2, seed=3)
    return [None, SteeringPlan((FeatureEdit(sae, 4, "clamp", 8.0),)), None]


def drain(handle, timeout: float = 60.0) -> list:
    """Every event of ``handle``; fails (instead of hanging) when a final event never comes."""
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(handle), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"no final event within {timeout} s: {events}"
    return events


def run_together(engine, requests):
    """Submit all ``requests`` so the loop admits them in one batch; their events, in order."""
    loop = EngineLoop(engine)
    try:
        with loop._wake:  # the engine thread waits until every request is queued
            handles = [loop.submit(r) for r in requests]
        return [drain(h) for h in handles]
    finally:
        loop.close()


@pytest.mark.parametrize("fail_on", ["prefill", "decode"])
def test_a_failing_row_fails_only_its_own_request(fail_on):
    engine = make_engine(limits=Limits(max_batch=8))
    sampling = SamplingParams(temperature=0, max_new_tokens=8, min_new_tokens=8)
    others = [make_request(engine, p, plan, sampling) for p, plan in zip(PROMPTS, plans())]
    bad = make_request(engine, PROMPTS[3], faulty_plan(fail_on), sampling)
    solo = [
        tokens(make_engine().stream(make_request(engine, r_prompt, plan, sampling)))
        for r_prompt, plan in zip(PROMPTS, plans())
    ]
    results = run_together(engine, [others[0], bad, others[1], others[2]])
    (final,) = [e for e in results[1] if e.finish_reason]
    assert final.finish_reason == "error" and f"injected {fail_on} fault" in str(final.error)
    assert [tokens(results[i]) for i in (0, 2, 3)] == solo
    assert [e.finish_reason for i in (0, 2, 3) for e in results[i] if e.finish_reason] == [
        "length"
    ] * 3
    assert not engine.live


def test_a_prompt_at_the_models_context_is_cut_to_fit_and_spares_its_batch():
    engine = make_engine("gpt2")  # 256 positions
    context = engine.model.context_length
    long_prompt = " ".join(["hello"] * 244)
    request = make_request(
        engine, long_prompt, None, SamplingParams(temperature=0, max_new_tokens=64)
    )
    room = context - len(request.rows[0].prompt_ids)
    assert request.sampling.max_new_tokens == room < 64
    innocent = make_request(engine, "the cat is big", None, GREEDY)
    solo = tokens(make_engine("gpt2").stream(make_request(engine, "the cat is big", None, GREEDY)))
    long_events, innocent_events = run_together(engine, [request, innocent])
    assert long_events[-1].finish_reason == "length"
    assert long_events[-1].completion_tokens == room
    assert tokens(innocent_events) == solo
    with pytest.raises(
        PromptTooLong, match=rf"the prompt has \d+ tokens, but the model's context is {context}"
    ):
        make_request(engine, " ".join(["hello"] * 300), None, GREEDY)


class CountingEngine:
    """Counts the engine's forward passes and the requests each one carried."""

    def __init__(self, engine):
        self.engine, self.passes = engine, []
        real = engine._forward

        def forward(steering, ids, *args, **kwargs):
            self.passes.append(ids.shape[0])
            return real(steering, ids, *args, **kwargs)

        engine._forward = forward


def finals(events):
    return [e.finish_reason for e in events if e.finish_reason]


def test_a_cancel_while_waiting_ends_at_once_and_never_runs():
    engine = make_engine(limits=Limits(max_batch=2))
    counter = CountingEngine(engine)
    loop = EngineLoop(engine)
    try:
        busy = loop.submit(
            make_request(
                engine,
                "hello",
                None,
                SamplingParams(temperature=0, max_new_tokens=40, min_new_tokens=40),
                compare=True,
            )
        )
        waiting = loop.submit(make_request(engine, "the cat", None, GREEDY))
        waiting.cancel()
        events = drain(waiting)
        assert finals(events) == ["cancelled"] and events[0].completion_tokens == 0
        assert finals(drain(busy)) == ["length", "length"]
        assert max(counter.passes) == 2  # the cancelled request never joined a forward pass
    finally:
        loop.close()


def test_a_cancel_during_admission_gets_its_final_event_and_no_more_passes():
    engine = make_engine()
    counter = CountingEngine(engine)
    loop = EngineLoop(engine)
    real_admit = engine.admit
    request = make_request(
        engine,
        "hello",
        None,
        SamplingParams(temperature=0, max_new_tokens=30, min_new_tokens=30),
        compare=True,
    )

    def admit(requests):
        loop.cancel(request.id)  # lands while the request is being admitted
        return real_admit(requests)

    engine.admit = admit
    try:
        events = drain(loop.submit(request))
    finally:
        loop.close()
    assert sorted(finals(events)) == ["cancelled", "cancelled"]
    assert counter.passes == [2]  # the prefill only: no decode step after the cancel


def test_a_cancel_while_decoding_stops_the_forward_passes():
    engine = make_engine()
    counter = CountingEngine(engine)
    loop = EngineLoop(engine)
    try:
        handle = loop.submit(
            make_request(
                engine,
                "hello",
                None,
                SamplingParams(temperature=0, max_new_tokens=60, min_new_tokens=60),
            )
        )
        events = []
        for event in handle:
            events.append(event)
            if len(events) == 3:
                handle.cancel()
                passes_at_cancel = len(counter.passes)
        assert finals(events) == ["cancelled"]
        assert len(counter.passes) <= passes_at_cancel + 1  # at most the step already running
        assert len(events) < 10
        late = list(handle)  # a cancel after the end changes nothing
        handle.cancel()
        assert late == [] and not loop._handles
    finally:
        loop.close()


def test_an_abandoned_async_reader_leaves_no_thread_blocked():
    engine = make_engine(limits=Limits(max_batch=2))
    loop = EngineLoop(engine)
    long = SamplingParams(temperature=0, max_new_tokens=200, min_new_tokens=200)

    async def main():
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        busy = loop.submit(make_request(engine, "hello", None, long, compare=True))
        waiting = loop.submit(make_request(engine, "the cat", None, GREEDY))

        async def read():
            return [e async for e in waiting]

        task = asyncio.create_task(read())
        await asyncio.sleep(0.1)  # its thread now waits for the first event
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # with one worker thread, a blocked reader would block this call forever
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 10) == 42
        busy.cancel()

    try:
        asyncio.run(main())
    finally:
        loop.close()
