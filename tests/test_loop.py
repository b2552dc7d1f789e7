"""Many users at once: shared batches with no cross-talk, cancellation, a bounded queue."""

from __future__ import annotations

import asyncio
import threading

import pytest
from random_saes import random_sae
from test_engine import make_engine, make_request, tokens
from tiny_models import HIDDEN

from steering import FeatureEdit, SteeringPlan, count_hooks
from steering.errors import Busy
from steering.limits import Limits
from steering.loop import EngineLoop
from steering.sampling import SamplingParams

WORDS = "hello how are you the golden gate bridge is big red fog cat dog sea".split()


def plan_for(i: int) -> SteeringPlan | None:
    if i % 4 == 0:
        return None
    sae = random_sae(HIDDEN, 32, layer=i % 4, seed=i)
    mode = ("clamp", "add", "ablate")[i % 3]
    return SteeringPlan((FeatureEdit(sae, i, mode, 4.0 + i),))


def test_sixteen_concurrent_requests_each_equal_their_solo_run():
    engine = make_engine(limits=Limits(max_batch=32))
    specs = []
    for i in range(16):
        prompt = " ".join(WORDS[i % 7 : i % 7 + 1 + i % 5])
        params = SamplingParams(
            temperature=(0, 0.8, 1.2)[i % 3],
            top_p=(1.0, 0.9)[i % 2],
            max_new_tokens=6 + i % 9,
            seed=100 + i,
        )
        specs.append((prompt, plan_for(i), params))
    solo = [tokens(engine.stream(make_request(engine, *spec))) for spec in specs]

    loop = EngineLoop(engine)
    results: dict[int, list[int]] = {}
    start = threading.Barrier(16)

    def user(i):
        req = make_request(engine, *specs[i])
        start.wait()
        results[i] = tokens(list(loop.submit(req)))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    loop.close()
    assert [results[i] for i in range(16)] == solo
    assert count_hooks(engine.model.model) == 0


def test_cancel_frees_the_row_and_the_next_request_is_clean():
    engine = make_engine()
    loop = EngineLoop(engine)
    long = SamplingParams(temperature=0, max_new_tokens=200)
    handle = loop.submit(make_request(engine, "hello", plan_for(1), long, compare=True))
    events = iter(handle)
    first = [next(events) for _ in range(4)]
    assert all(e.finish_reason is None for e in first)
    events.close()  # the reader went away
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    after = tokens(list(loop.submit(make_request(engine, "hello", None, greedy))))
    loop.close()
    assert after == tokens(make_engine().stream(make_request(make_engine(), "hello", None, greedy)))
    assert engine.live == [] and count_hooks(engine.model.model) == 0


def test_async_reading():
    engine = make_engine()
    loop = EngineLoop(engine)
    params = SamplingParams(temperature=0.9, max_new_tokens=8, seed=5)

    async def read():
        return [e async for e in loop.submit(make_request(engine, "the cat", None, params))]

    events = asyncio.run(read())
    loop.close()
    assert tokens(events) == tokens(engine.stream(make_request(engine, "the cat", None, params)))
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 8


def test_queue_is_bounded():
    engine = make_engine(limits=Limits(max_batch=2))
    loop = EngineLoop(engine, max_waiting=1)
    params = SamplingParams(temperature=0, max_new_tokens=200)
    handles = [loop.submit(make_request(engine, "hello", None, params, compare=True))]
    with pytest.raises(Busy, match="requests are already waiting"):
        for _ in range(3):
            handles.append(loop.submit(make_request(engine, "hello", None, params)))
    for h in handles:
        h.cancel()
    loop.close()


def test_a_slow_reader_takes_what_piled_up_in_one_batch():
    """The page re-renders slowly; ``batches`` hands it every ready event at once, so it is
    never more than one update behind the engine."""
    engine = make_engine()
    loop = EngineLoop(engine)
    params = SamplingParams(temperature=0, max_new_tokens=20)
    request = make_request(engine, "hello", plan_for(1), params, compare=True)
    solo = tokens(engine.stream(make_request(engine, "hello", plan_for(1), params, compare=True)))
    handle = loop.submit(request)
    batches = handle.batches()
    first = next(batches)
    while not handle.finished:  # the reader is busy while the engine finishes
        threading.Event().wait(0.01)
    rest = list(batches)
    loop.close()
    assert len(rest) == 1  # everything after the first batch arrives in one
    events = first + rest[0]
    assert tokens(events) == solo
    assert sorted(e.row for e in events if e.finish_reason) == [0, 1]


# ---- jobs between steps ----


def test_jobs_run_on_the_engine_thread_and_their_errors_stay_theirs():
    engine = make_engine()
    loop = EngineLoop(engine)
    params = SamplingParams(temperature=0.8, max_new_tokens=12, seed=3)
    solo = tokens(engine.stream(make_request(engine, "the cat", plan_for(1), params)))
    handle = loop.submit(make_request(engine, "the cat", plan_for(1), params))
    names = loop.run(lambda: threading.current_thread().name)
    failing = loop.run(lambda: 1 // 0)
    assert names.result(timeout=30) == "steering-engine"
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=30)
    assert tokens(list(handle)) == solo  # the request went on, unchanged
    assert loop.run(lambda: 7).result(timeout=30) == 7 and loop.health()["engine_alive"]
    loop.close()


def test_waiting_jobs_are_bounded_cancellable_and_fail_busy_on_close():
    engine = make_engine()
    loop = EngineLoop(engine, max_waiting=2)
    release = threading.Event()
    ran = []
    blocker = loop.run(release.wait)  # holds the engine thread
    while not blocker.running():
        threading.Event().wait(0.01)
    cancelled = loop.run(lambda: ran.append("cancelled"))
    waiting = loop.run(lambda: ran.append("waiting"))
    with pytest.raises(Busy, match="2 jobs are already waiting"):
        loop.run(lambda: None)
    assert loop.health()["jobs_waiting"] == 2
    assert cancelled.cancel()
    release.set()
    waiting.result(timeout=30)
    assert ran == ["waiting"]  # the cancelled job never ran
    release.clear()
    blocker = loop.run(release.wait)
    while not blocker.running():
        threading.Event().wait(0.01)
    late = loop.run(lambda: ran.append("late"))
    closing = threading.Thread(target=loop.close)
    closing.start()
    while loop.health()["engine_alive"]:  # close has begun: no later job may start
        threading.Event().wait(0.01)
    release.set()
    closing.join(timeout=60)
    with pytest.raises(Busy, match="shutting down"):
        late.result(timeout=30)
    with pytest.raises(Busy, match="shutting down"):
        loop.run(lambda: None)
    assert ran == ["waiting"]
