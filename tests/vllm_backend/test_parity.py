"""Every steering the project's engine does, the vLLM backend does token for token.

Each case runs on both backends (``backend`` parameter) against the same independent
reference: transformers' own ``generate`` with this project's hooks. The demo world carries
SAEs of every kind (ReLU, JumpReLU, TopK, gated; layer-norm, norm-rescale and centring
normalisations; resid_post and resid_pre, layer 0's input included; two SAEs at one hook
point); the architecture worlds run the core cases on every architecture vLLM's CPU backend
runs here.
"""

from __future__ import annotations

import pytest
import torch
from random_saes import random_sae
from steered import reference, run, start_world
from worlds import CONFIGS, HIDDEN, load, write_model

from steering.demo import MODEL_DIR, load_demo
from steering.plan import FeatureEdit, SteeringPlan
from steering.sae import SAE, HookPoint

BACKENDS = ("own", "vllm")


def gated_sae(d_in: int, d_sae: int, layer: int, seed: int, **kwargs) -> SAE:
    g = torch.Generator().manual_seed(seed)
    base = random_sae(d_in, d_sae, layer, seed=seed, always_on=(2,))
    return SAE(
        W_enc=base.W_enc,
        b_enc=base.b_enc,
        W_dec=base.W_dec,
        b_dec=base.b_dec,
        hook=HookPoint(layer),
        activation="gated",
        b_gate=torch.randn(d_sae, generator=g) * 0.1 + 0.5,
        r_mag=torch.randn(d_sae, generator=g) * 0.1,
        b_mag=torch.randn(d_sae, generator=g) * 0.1,
        max_activation=base.max_activation,
        format="test",
        source=f"gated-{seed}",
        **kwargs,
    )


def demo_saes(d: int) -> dict[str, SAE]:
    _, demo = load_demo()
    return {
        "demo": demo,  # blocks.1.hook_resid_post
        "relu": random_sae(d, 64, 1, seed=1, always_on=(3,)),
        "topk": random_sae(d, 64, 1, seed=2, activation="topk", always_on=(4,)),
        "jump": random_sae(
            d, 64, 2, seed=3, site="resid_pre", activation="jumprelu", always_on=(5,)
        ),
        "gated": gated_sae(d, 64, 3, seed=4, normalization="layer_norm"),
        "pre0": random_sae(
            d,
            64,
            0,
            seed=5,
            site="resid_pre",
            always_on=(6,),
            normalization="constant_norm_rescale",
        ),
        "center": random_sae(d, 64, 2, seed=6, always_on=(7,), normalization="center"),
    }


def edit(sae: SAE, feature: int, mode: str = "clamp", value: float = 0.0, **kw) -> FeatureEdit:
    return FeatureEdit(sae, feature, mode, value, **kw)  # type: ignore[arg-type]


def demo_cases(s: dict[str, SAE]) -> dict[str, SteeringPlan | None]:
    e = edit
    return {
        "unsteered": None,
        "clamp_max_act": SteeringPlan((e(s["demo"], 0, value=8.0, unit="max_act"),)),
        "clamp_raw": SteeringPlan((e(s["relu"], 3, value=40.0),)),
        "add": SteeringPlan((e(s["relu"], 9, "add", 30.0),)),
        "ablate": SteeringPlan((e(s["relu"], 3, "ablate"),)),
        "prompt_only": SteeringPlan((e(s["relu"], 9, "add", 80.0, positions="prompt"),)),
        "generated_only": SteeringPlan((e(s["relu"], 9, "add", 30.0, positions="generated"),)),
        "skip_special": SteeringPlan((e(s["relu"], 3, value=40.0, skip_special_tokens=True),)),
        "two_features": SteeringPlan((e(s["relu"], 3, value=40.0), e(s["relu"], 9, "add", 20.0))),
        "two_layers": SteeringPlan((e(s["relu"], 9, "add", 20.0), e(s["jump"], 5, value=50.0))),
        "two_saes_one_hook": SteeringPlan(
            (e(s["relu"], 9, "add", 20.0), e(s["topk"], 4, value=40.0))
        ),
        "topk": SteeringPlan((e(s["topk"], 4, value=40.0, unit="max_act"),)),
        "gated_layer_norm": SteeringPlan((e(s["gated"], 2, value=30.0),)),
        "layer0_norm_rescale": SteeringPlan((e(s["pre0"], 6, value=60.0),)),
        "center": SteeringPlan((e(s["center"], 7, value=50.0),)),
        "everything": SteeringPlan(
            (
                e(s["demo"], 0, value=4.0, unit="max_act"),
                e(s["relu"], 9, "add", 10.0, positions="generated"),
                e(s["jump"], 5, value=30.0, skip_special_tokens=True),
                e(s["gated"], 2, value=20.0),
                e(s["pre0"], 6, value=30.0, positions="prompt"),
                e(s["center"], 7, "ablate"),
            )
        ),
    }


@pytest.fixture(scope="module")
def demo_world():
    model, _ = load_demo()
    world = start_world(model, str(MODEL_DIR), demo_saes(model.hidden_size))
    yield world
    world.close()


CASES = list(demo_cases(demo_saes(128)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_every_steering_equals_the_reference_on_both_backends(demo_world, case, backend):
    plan = demo_cases(demo_world.saes)[case]
    prompt = demo_world.prompts[1]
    (tokens,), _ = run(demo_world.backend(backend), [(prompt, plan)])
    expected = reference(demo_world.model, prompt, plan)
    assert tokens == expected
    if plan is not None:  # the steering really steers: it is not the unsteered reply
        assert expected != reference(demo_world.model, prompt, None)


def test_steered_and_unsteered_rows_in_one_batch_match_their_solo_runs(demo_world):
    cases = demo_cases(demo_world.saes)
    rows = [(demo_world.prompts[i % 2], cases[c]) for i, c in enumerate(CASES)]
    together, _ = run(demo_world.vllm, rows)
    for row, tokens in zip(rows, together):
        (alone,), _ = run(demo_world.vllm, [row])
        assert tokens == alone


# ---- every architecture vLLM's CPU backend runs here ----


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def arch_world(request, tmp_path_factory):
    arch = request.param
    folder = write_model(arch, tmp_path_factory.mktemp(arch) / arch)
    model = load(folder)
    saes = {
        "post": random_sae(HIDDEN, 32, 1, seed=1, always_on=(3,)),
        "pre": random_sae(
            HIDDEN, 32, 2, seed=2, site="resid_pre", activation="jumprelu", always_on=(5,)
        ),
    }
    # vLLM runs GPT-NeoX through its Transformers backend, which patches transformers'
    # classes in its process: keep it out of the one the reference runs in
    world = start_world(model, str(folder), saes, multiprocess=arch == "gpt_neox")
    world.arch = arch
    yield world
    world.close()


def arch_cases(s: dict[str, SAE]) -> dict[str, SteeringPlan | None]:
    return {
        "unsteered": None,
        "clamp": SteeringPlan((edit(s["post"], 3, value=20.0),)),
        "add_generated": SteeringPlan((edit(s["post"], 7, "add", 40.0, positions="generated"),)),
        "two_layers_skip_special": SteeringPlan(
            (edit(s["post"], 3, "ablate"), edit(s["pre"], 5, value=40.0, skip_special_tokens=True))
        ),
    }


@pytest.mark.parametrize("case", ["unsteered", "clamp", "add_generated", "two_layers_skip_special"])
def test_every_architecture_steers_the_same_on_both_backends(arch_world, case):
    plan = arch_cases(arch_world.saes)[case]
    prompt = arch_world.prompts[0]
    expected = reference(arch_world.model, prompt, plan)
    for backend in BACKENDS:
        (tokens,), _ = run(arch_world.backend(backend), [(prompt, plan)])
        assert tokens == expected, (arch_world.arch, backend)
    if plan is not None:
        assert expected != reference(arch_world.model, prompt, None), arch_world.arch
