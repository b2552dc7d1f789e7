"""Tensor parallel 2 on this machine's CPU (two worker processes, one core each): every rank
gets every SAE and steers the full residual stream it holds, so the replies equal the
reference's token for token, alone and in a mixed batch."""

from __future__ import annotations

import os

import pytest
from steered import reference, run, start_world
from test_parity import demo_cases, demo_saes

from steering.demo import MODEL_DIR, load_demo

CASES = [
    "unsteered",
    "clamp_max_act",
    "add",
    "two_layers",
    "skip_special",
    "prompt_only",
    "everything",
]


@pytest.fixture(scope="module")
def tp_world():
    cores = sorted(os.sched_getaffinity(0))
    saved = {
        k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
    }
    # one core per rank (vLLM's CPU build holds one core back by default: none here)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"{cores[0]}|{cores[-1]}"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    model, _ = load_demo()
    try:
        world = start_world(
            model,
            str(MODEL_DIR),
            demo_saes(model.hidden_size),
            multiprocess=True,
            tensor_parallel_size=2,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield world
    world.close()


def test_the_engine_really_runs_two_ranks(tp_world):
    config = tp_world.vllm.engine.llm.vllm_config.parallel_config
    assert (config.tensor_parallel_size, config.world_size) == (2, 2)


@pytest.mark.parametrize("case", CASES)
def test_tensor_parallel_steers_like_the_reference(tp_world, case):
    plan = demo_cases(tp_world.saes)[case]
    prompt = tp_world.prompts[1]
    (tokens,), _ = run(tp_world.vllm, [(prompt, plan)])
    assert tokens == reference(tp_world.model, prompt, plan)


def test_a_mixed_batch_under_tensor_parallel_matches_solo_runs(tp_world):
    cases = demo_cases(tp_world.saes)
    rows = [(tp_world.prompts[i % 2], cases[c]) for i, c in enumerate(CASES)]
    together, _ = run(tp_world.vllm, rows)
    for (prompt, plan), tokens in zip(rows, together):
        assert tokens == reference(tp_world.model, prompt, plan)
