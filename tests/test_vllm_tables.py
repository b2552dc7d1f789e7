"""The vLLM backend's parts that need no vLLM: plans and SAEs as plain data, the per-token
tables against this engine's per-row maths, and the error when vLLM is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from random_saes import random_sae

from steering.errors import SteeringError
from steering.interventions import LayerIntervention
from steering.plan import FeatureEdit, SteeringPlan
from steering.vllm.slots import SlotBank, Stage, TokenWrite
from steering.vllm.wire import cache_salt, plan_to_wire, sae_from_payload, sae_payload

D = 32


def test_an_sae_crosses_to_the_workers_exactly_and_without_pickle():
    sae = random_sae(D, 48, 2, seed=4, activation="jumprelu", normalization="layer_norm")
    payload = sae_payload(sae)
    assert all(isinstance(t["data"], bytes) for t in payload["tensors"].values())
    back = sae_from_payload(payload, torch.device("cpu"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    assert (back.hook, back.activation, back.normalization) == (sae.hook, "jumprelu", "layer_norm")


def test_the_wire_plan_is_raw_units_and_the_salt_keys_the_steering():
    sae = random_sae(D, 48, 1)
    plan = SteeringPlan(
        (FeatureEdit(sae, 3, "clamp", 2.0, unit="max_act"), FeatureEdit(sae, 5, "ablate"))
    )
    wire = plan_to_wire(plan, {id(sae): "sae-1"})
    raw = 2.0 * float(sae.max_activation[3])
    assert wire == [
        ["sae-1", 3, "clamp", raw, "all", False],
        ["sae-1", 5, "clamp", 0.0, "all", False],
    ]
    assert cache_salt([]) is None and cache_salt(wire) == cache_salt([list(w) for w in wire])
    assert cache_salt(wire) != cache_salt(plan_to_wire(plan.scaled(2), {id(sae): "sae-1"}))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_per_token_tables_give_this_engines_per_row_delta_exactly(activation):
    """Two requests flattened into one (N, d) batch, as vLLM runs them, against the per-row
    (B, T, d) maths of this project's engine; the unsteered tokens get exactly 0."""
    sae = random_sae(D, 48, 1, seed=2, activation=activation, always_on=(3,))
    plans = [
        SteeringPlan((FeatureEdit(sae, 3, "clamp", 7.0), FeatureEdit(sae, 9, "add", 2.5))),
        None,
        SteeringPlan((FeatureEdit(sae, 40, "clamp", 1.5),)),
    ]
    lengths = [5, 3, 4]
    x = torch.randn(sum(lengths), D)
    bank = SlotBank("k", sae, max_tokens=32, slots=4, device=torch.device("cpu"), always=False)
    writes, start = [], 0
    for plan, n in zip(plans, lengths):
        for e in plan.active_edits if plan else ():
            mode = "add" if e.mode == "add" else "clamp"
            writes.append(
                TokenWrite(
                    start, start + n, e.feature, mode, e.raw_value, torch.ones(n, dtype=torch.bool)
                )
            )
        start += n
    bank.fill(sum(lengths), writes)
    stage = Stage()
    stage.groups = [[bank]]
    hidden = x.clone()
    stage.run(hidden, None)
    start = 0
    for plan, n in zip(plans, lengths):
        rows = [(0, e) for e in plan.active_edits] if plan else []
        own = x[start : start + n][None]
        if rows:
            own = LayerIntervention.build(rows, 1, torch.device("cpu"), per_row=True).apply(
                own, None
            )
        assert torch.allclose(hidden[start : start + n], own[0], atol=1e-5, rtol=0)
        if plan is None:
            assert torch.equal(hidden[start : start + n], x[start : start + n])
        start += n
    bank.fill(sum(lengths), [])  # a step with no steering clears the tables
    again = x.clone()
    stage.run(again, None)
    assert torch.equal(again, x) and not bank.active


def test_more_features_than_slots_in_one_step_is_an_error_naming_the_bound():
    sae = random_sae(D, 48, 1)
    bank = SlotBank("k", sae, max_tokens=8, slots=2, device=torch.device("cpu"), always=False)
    ones = torch.ones(2, dtype=torch.bool)
    with pytest.raises(SteeringError, match="at most 2"):
        bank.fill(2, [TokenWrite(0, 2, f, "add", 1.0, ones) for f in range(3)])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_backend_says_how_to_install_it():
    from steering.demo import MODEL_DIR, load_demo
    from steering.vllm.backend import VLLMSettings, start_vllm_backend

    model, sae = load_demo()
    with pytest.raises(SteeringError, match="make install-vllm"):
        start_vllm_backend(model, [sae], VLLMSettings(str(MODEL_DIR)))
