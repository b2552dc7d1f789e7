"""vLLM compiled (Dynamo and Inductor, its default) steers exactly as eager does: the hooks
are registered before compilation and the op is opaque to it, so nothing is dropped."""

from __future__ import annotations

import pytest
from random_saes import random_sae
from steered import reference, run, start_world

from steering.demo import MODEL_DIR, load_demo
from steering.plan import FeatureEdit, SteeringPlan
from steering.sampling import SamplingParams


@pytest.fixture(scope="module")
def compiled():
    model, demo = load_demo()
    saes = {
        "demo": demo,
        "pre": random_sae(model.hidden_size, 64, 2, seed=3, site="resid_pre", always_on=(5,)),
    }
    world = start_world(model, str(MODEL_DIR), saes, enforce_eager=False)
    yield world
    world.close()


def plans(saes):
    demo, pre = saes["demo"], saes["pre"]
    return [
        None,
        SteeringPlan((FeatureEdit(demo, 0, "clamp", 8.0, unit="max_act"),)),
        SteeringPlan((FeatureEdit(pre, 5, "clamp", 50.0, positions="generated"),)),
        SteeringPlan(
            (
                FeatureEdit(demo, 1, "add", 6.0, unit="max_act", skip_special_tokens=True),
                FeatureEdit(pre, 5, "ablate"),
            )
        ),
    ]


def test_the_compiled_engine_steers_each_row_as_the_reference(compiled):
    prompt = compiled.prompts[1]
    cases = plans(compiled.saes)
    together, _ = run(compiled.vllm, [(prompt, plan) for plan in cases])
    expected = [reference(compiled.model, prompt, plan) for plan in cases]
    assert together == expected
    assert len({tuple(t) for t in expected}) == len(cases)  # each plan steers differently


def test_the_compiled_engine_leaves_an_unsteered_row_bit_identical(compiled):
    sampling = SamplingParams(temperature=0, max_new_tokens=10, logprobs=5)
    a, b = compiled.prompts
    _, together = run(compiled.vllm, [(a, plans(compiled.saes)[1]), (b, None)], sampling)
    _, alone = run(compiled.vllm, [(b, None)], sampling)
    pick = lambda events, row: [
        (e.token_id, e.logprob, e.top_logprobs) for e in events if e.row == row
    ]  # noqa: E731,E501
    assert pick(together, 1) == pick(alone, 0)
