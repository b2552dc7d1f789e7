"""Steering invariants on tiny random models of real architectures."""

from __future__ import annotations

import pytest
import torch
from random_saes import random_sae
from tiny_models import CORE, HIDDEN, LAYERS, tiny_model

from steering import FeatureEdit, PlanError, SteeringError, SteeringPlan, clamp, count_hooks, steer
from steering.kv import cache_kwargs, new_cache
from steering.models import find_layers

PROMPT = torch.tensor([[1, 5, 9, 17, 33, 2, 40, 41]])


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(ids).logits


def capture_layer(model, layer: int):
    """Record the output of decoder layer ``layer`` (after any steering hook registered first)."""
    seen: list[torch.Tensor] = []

    def hook(_m, _a, out):
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = find_layers(model)[0][layer].register_forward_hook(hook)
    return seen, handle


@pytest.mark.parametrize("arch", CORE)
def test_zero_strength_is_bit_identical_and_registers_nothing(arch):
    model = tiny_model(arch)
    sae = random_sae(HIDDEN, 32, layer=1)
    before = logits(model)
    zero_add = SteeringPlan((FeatureEdit(sae, 3, "add", 0.0),))
    for plan in (zero_add, clamp(sae, 3, 10.0).scaled(0), SteeringPlan.off()):
        with steer(model, plan) as s:
            assert s.num_hooks == 0 and count_hooks(model) == 0
            assert torch.equal(logits(model), before)


@pytest.mark.parametrize("arch", CORE)
def test_logits_restored_exactly_after_the_block(arch):
    model = tiny_model(arch)
    sae = random_sae(HIDDEN, 32, layer=2)
    before = logits(model)
    with steer(model, clamp(sae, 5, 8.0)) as s:
        assert s.num_hooks == 1 and count_hooks(model) == 1
        steered = logits(model)
    assert not torch.allclose(steered, before)
    assert count_hooks(model) == 0
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("arch", CORE)
def test_hooks_removed_after_an_exception(arch):
    model = tiny_model(arch)
    sae = random_sae(HIDDEN, 32, layer=1)
    with pytest.raises(RuntimeError, match="boom"), steer(model, clamp(sae, 1, 4.0)):
        assert count_hooks(model) == 1
        raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_nested_blocks_remove_only_their_own_hooks():
    model = tiny_model("llama")
    a, b = random_sae(HIDDEN, 32, layer=1), random_sae(HIDDEN, 32, layer=3, seed=1)
    with steer(model, clamp(a, 1, 4.0)):
        assert count_hooks(model) == 1
        with steer(model, clamp(b, 2, 4.0)):
            assert count_hooks(model) == 2
        assert count_hooks(model) == 1
    assert count_hooks(model) == 0


def test_generator_closed_early_removes_hooks():
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 32, layer=1)

    def stream():
        with steer(model, clamp(sae, 1, 4.0)):
            for _ in range(10):
                yield count_hooks(model)

    gen = stream()
    assert next(gen) == 1
    gen.close()
    assert count_hooks(model) == 0


@pytest.mark.parametrize("arch", CORE)
@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_clamp_reencodes_to_target_with_kv_cache(arch, activation):
    """With an encoder that inverts the decoder (W_dec W_enc = I) and a feature that is active,
    re-encoding the steered residual gives exactly the target, every other feature and the SAE
    error term unchanged: at prompt positions and at positions generated with a KV cache."""
    layer, feature, target = 1, 7, 6.5
    model = tiny_model(arch)
    sae = random_sae(
        HIDDEN, 32, layer, biorthogonal=True, always_on=(feature,), activation=activation
    )
    seen, handle_before = [], None
    ids = PROMPT
    raw: list[torch.Tensor] = []

    def record_raw(_m, _a, out):  # registered before steering: sees the unsteered residual
        raw.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle_before = find_layers(model)[0][layer].register_forward_hook(record_raw)
    try:
        with steer(model, clamp(sae, feature, target)), torch.no_grad():
            seen, handle = capture_layer(model, layer)
            past = cache_kwargs(model, new_cache())
            out = model(ids, use_cache=True, **past)
            for _ in range(3):  # three cached decode steps, one token each
                nxt = out.logits[:, -1:].argmax(-1)
                out = model(nxt, use_cache=True, **past)
            handle.remove()
    finally:
        handle_before.remove()
    assert [s.shape[1] for s in seen] == [PROMPT.shape[1], 1, 1, 1]
    for x, x_steered in zip(raw, seen):
        f, f_steered = sae.encode(x), sae.encode(x_steered)
        torch.testing.assert_close(
            f_steered[..., feature], torch.full_like(f[..., feature], target)
        )
        others = torch.arange(sae.d_sae) != feature
        torch.testing.assert_close(f_steered[..., others], f[..., others], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.error(x_steered), sae.error(x), atol=1e-4, rtol=1e-4)


def test_clamp_is_the_golden_gate_definition_for_any_sae():
    """For an arbitrary SAE the steered residual is decode(features with f_i := target) + error."""
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 48, layer=2, activation="jumprelu", seed=3)
    raw, h1 = capture_layer(model, 2)
    with steer(model, clamp(sae, 11, 3.0)):
        steered, h2 = capture_layer(model, 2)
        logits(model)
    h1.remove(), h2.remove()
    x = raw[0]
    f = sae.encode(x)
    f[..., 11] = 3.0
    torch.testing.assert_close(steered[0], sae.decode(f, x) + sae.error(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", CORE)
def test_per_row_plans_match_single_row_runs(arch):
    model = tiny_model(arch)
    sae = random_sae(HIDDEN, 32, layer=1)
    plan = clamp(sae, 4, 9.0) + SteeringPlan((FeatureEdit(sae, 9, "add", -3.0),))
    ids = torch.cat([PROMPT, PROMPT.flip(-1)])
    alone_base = logits(model, ids[:1])
    with steer(model, plan):
        alone_steered = logits(model, ids[1:])
    with steer(model, [None, plan]):
        both = logits(model, ids)
    torch.testing.assert_close(both[0], alone_base[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], alone_steered[0], atol=1e-5, rtol=0)
    assert not torch.allclose(alone_steered[0], logits(model, ids[1:])[0])


def test_rows_with_different_plans_and_layers():
    model = tiny_model("llama")
    a, b = random_sae(HIDDEN, 32, layer=1), random_sae(HIDDEN, 32, layer=3, seed=5)
    plans = [clamp(a, 2, 5.0), clamp(b, 6, -2.0) + clamp(a, 7, 1.0), None]
    ids = torch.cat([PROMPT, PROMPT.roll(1, -1), PROMPT.roll(2, -1)])
    with steer(model, plans) as s:
        assert s.num_hooks == 2
        batched = logits(model, ids)
    for row, plan in enumerate(plans):
        with steer(model, plan or SteeringPlan.off()):
            torch.testing.assert_close(
                batched[row], logits(model, ids[row : row + 1])[0], atol=1e-5, rtol=0
            )


def test_resid_pre_of_next_layer_equals_resid_post():
    model = tiny_model("llama")
    post = random_sae(HIDDEN, 32, layer=1)
    pre = random_sae(HIDDEN, 32, layer=2, site="resid_pre")
    pre.W_enc, pre.b_enc, pre.W_dec, pre.b_dec = post.W_enc, post.b_enc, post.W_dec, post.b_dec
    with steer(model, clamp(post, 3, 7.0)):
        a = logits(model)
    with steer(model, clamp(pre, 3, 7.0)):
        b = logits(model)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_add_moves_the_residual_by_value_times_decoder_row():
    model = tiny_model("qwen2")
    sae = random_sae(HIDDEN, 32, layer=0)
    raw, h1 = capture_layer(model, 0)
    with steer(model, SteeringPlan((FeatureEdit(sae, 12, "add", 2.5),))):
        steered, h2 = capture_layer(model, 0)
        logits(model)
    h1.remove(), h2.remove()
    torch.testing.assert_close(
        steered[0] - raw[0], (2.5 * sae.W_dec[12]).expand_as(raw[0]), atol=1e-5, rtol=0
    )


def test_ablate_sets_an_active_feature_to_zero():
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 32, layer=1, biorthogonal=True, always_on=(4,))
    with steer(model, SteeringPlan((FeatureEdit(sae, 4, "ablate"),))):
        steered, h = capture_layer(model, 1)
        logits(model)
    h.remove()
    torch.testing.assert_close(
        sae.encode(steered[0])[..., 4], torch.zeros(PROMPT.shape), atol=1e-4, rtol=0
    )


def test_max_activation_units():
    sae = random_sae(HIDDEN, 32, layer=1)
    edit = FeatureEdit(sae, 5, "clamp", 10.0, unit="max_act")
    assert edit.raw_value == pytest.approx(10.0 * float(sae.max_activation[5]))
    assert clamp(sae, 5, 10.0, unit="max_act").scaled(2).edits[0].raw_value == pytest.approx(
        20.0 * float(sae.max_activation[5])
    )


@pytest.mark.parametrize("normalization", ["layer_norm", "constant_norm_rescale"])
def test_normalising_sae_clamp_is_the_golden_gate_definition(normalization):
    """SAEs that normalise each token: the clamp equals decode(f with f_i := t, x) + error(x),
    with the reconstruction scaled back by the token's own statistics."""
    model = tiny_model("gemma2")
    sae = random_sae(
        HIDDEN,
        32,
        layer=2,
        activation="jumprelu",
        normalization=normalization,
        apply_b_dec_to_input=True,
    )
    raw, h1 = capture_layer(model, 2)
    with steer(model, clamp(sae, 1, 4.0)):
        steered, h2 = capture_layer(model, 2)
        logits(model)
    h1.remove(), h2.remove()
    x = raw[0]
    f = sae.encode(x)
    f[..., 1] = 4.0
    torch.testing.assert_close(steered[0], sae.decode(f, x) + sae.error(x), atol=1e-4, rtol=1e-5)


def positions_run(scope: str, skip_special: bool = False):
    """Which positions a scoped add touches, over a prefill and two cached steps."""
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 32, layer=1)
    plan = SteeringPlan(
        (FeatureEdit(sae, 2, "add", 3.0, positions=scope, skip_special_tokens=skip_special),)
    )
    raw, h1 = capture_layer(model, 1)
    with torch.no_grad(), steer(model, plan, special_token_ids=[1, 2]):
        steered, h2 = capture_layer(model, 1)
        past = cache_kwargs(model, new_cache())
        model(PROMPT, use_cache=True, **past)
        for tok in (2, 50):
            model(torch.tensor([[tok]]), use_cache=True, **past)
    h1.remove(), h2.remove()
    return [((s - r).abs().amax(-1) > 0)[0].tolist() for r, s in zip(raw, steered)]


def test_positions_prompt_only_generated_only_and_special_tokens():
    n = PROMPT.shape[1]
    assert positions_run("all") == [[True] * n, [True], [True]]
    assert positions_run("prompt") == [[True] * n, [False], [False]]
    assert positions_run("generated") == [[False] * n, [True], [True]]
    # PROMPT = [1, 5, 9, 17, 33, 2, ...]: tokens 1 and 2 are special, then 2 and 50 are generated
    special = [t not in (1, 2) for t in PROMPT[0].tolist()]
    assert positions_run("all", skip_special=True) == [special, [False], [True]]


def test_bf16_model_with_fp32_sae():
    model = tiny_model("llama").to(torch.bfloat16)
    sae = random_sae(HIDDEN, 32, layer=1)
    before = logits(model)
    with steer(model, clamp(sae, 3, 20.0)):
        steered = logits(model)
    assert steered.dtype == torch.bfloat16 and not torch.equal(steered, before)
    assert torch.equal(logits(model), before)


# ---- bad input: each error names the bad value and what is valid ----


def test_feature_index_out_of_range():
    sae = random_sae(HIDDEN, 32, layer=1)
    for bad in (32, -1, 10**9):
        with pytest.raises(PlanError, match=rf"feature index {bad} .*valid indices are 0\.\.31"):
            clamp(sae, bad, 1.0)


def test_sae_width_must_match_hidden_size():
    model = tiny_model("gpt2")
    sae = random_sae(HIDDEN * 2, 32, layer=1)
    with (
        pytest.raises(PlanError, match=rf"d_in={HIDDEN * 2}.*hidden size is {HIDDEN}"),
        steer(model, clamp(sae, 1, 1.0)),
    ):
        pass
    assert count_hooks(model) == 0


def test_layer_out_of_range():
    model = tiny_model("gemma2")
    sae = random_sae(HIDDEN, 32, layer=LAYERS)
    with (
        pytest.raises(PlanError, match=rf"layer={LAYERS}.*valid: 0\.\.{LAYERS - 1}"),
        steer(model, clamp(sae, 1, 1.0)),
    ):
        pass


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(bad):
    sae = random_sae(HIDDEN, 32, layer=1)
    with pytest.raises(PlanError, match="not finite"):
        clamp(sae, 1, bad)
    with pytest.raises(PlanError, match="not finite"):
        clamp(sae, 1, 1.0).scaled(bad)


def test_multiple_of_max_without_known_maximum():
    sae = random_sae(HIDDEN, 32, layer=1, max_activation=None)
    with pytest.raises(PlanError, match="no known max activations.*raw units"):
        clamp(sae, 1, 5.0, unit="max_act")


def test_unknown_mode_and_double_clamp():
    sae = random_sae(HIDDEN, 32, layer=1)
    with pytest.raises(PlanError, match="mode 'pin' is not one of clamp, add, ablate"):
        FeatureEdit(sae, 1, "pin", 1.0)
    model = tiny_model("llama")
    with (
        pytest.raises(PlanError, match="clamped twice"),
        steer(model, clamp(sae, 1, 1.0) + clamp(sae, 1, 2.0)),
    ):
        pass
    assert count_hooks(model) == 0


def test_batch_size_must_match_per_row_plans():
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 32, layer=1)
    with steer(model, [clamp(sae, 1, 1.0), None]), pytest.raises(PlanError, match="2 per-row"):
        logits(model)
    assert count_hooks(model) == 0


def test_scoped_edits_need_positions():
    model = tiny_model("llama")
    sae = random_sae(HIDDEN, 32, layer=1)
    plan = SteeringPlan((FeatureEdit(sae, 1, "add", 1.0, positions="prompt"),))
    embeds = model.get_input_embeddings()(PROMPT)
    with steer(model, plan), pytest.raises(SteeringError, match="set_positions"):
        model(inputs_embeds=embeds)
