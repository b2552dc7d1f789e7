"""Behavioural tests of the shipped demo world (steering/demo/files, presets/demo-*.json).

They load the shipped files (no training) and check that steering visibly works: the numbers
were measured by ``python -m steering.demo.evaluate`` (docs/demo-world.md) and the bounds leave
a little room. Every batch of prompts runs in one engine admit, so the module takes seconds.
"""

from __future__ import annotations

import os

import pytest

from steering.cli import main
from steering.demo import MODEL_DIR, SAE_DIR, load_demo
from steering.demo.corpus import (
    BRIDGE_WORDS,
    FREE_TEXT_PROMPTS,
    STYLE_MARKERS,
    TOPIC_WORDS,
    held_out_prompts,
    make_corpus,
)
from steering.demo.evaluate import generate, preset_plan, rate, reply_loss, well_formed_rate

N_PROMPTS = 60
LOSS_BOUND = 0.8  # nats per token of steered replies under the unsteered model (measured 0.58)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def model(demo):
    return demo[0]


@pytest.fixture(scope="module")
def prompts():
    return held_out_prompts(N_PROMPTS, "test")


@pytest.fixture(scope="module")
def baseline(model, prompts):
    return generate(model, prompts, None)


def test_shipped_files_load_offline_without_training(demo):
    model, sae = demo
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing is fetched
    assert (MODEL_DIR / "model.safetensors").is_file() and (SAE_DIR / "cfg.json").is_file()
    size = sum(p.stat().st_size for p in MODEL_DIR.parent.rglob("*") if p.is_file())
    assert size < 5 * 2**20
    assert model.num_layers == 4 and model.hidden_size == 128
    assert sae.hook.layer == 1 and sae.max_activation is not None and sae.frequency is not None
    assert len(sae.labels) > sae.d_sae // 2
    tok = model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What should I COOK tonight, Zorblax?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words[:4] == ["<bos>", "<user>", "what", "should"]
    assert "<unk>" in words and words[-2:] == ["<eot>", "<assistant>"]
    assert tok.eos_token == "<eot>"
    assert model.model.generation_config.eos_token_id == tok.eos_token_id


def test_held_out_prompts_are_not_in_the_corpus(prompts):
    seen = {d.user for d in make_corpus(40_000)}
    assert len(prompts) >= 50 and not seen & set(prompts)


def test_baseline_is_fluent_and_rarely_mentions_the_bridge(model, baseline):
    assert well_formed_rate(baseline) >= 0.9
    assert rate(baseline, BRIDGE_WORDS) <= 0.05


def test_golden_gate_preset_brings_in_the_bridge(model, prompts, baseline):
    steered = generate(model, prompts, preset_plan(model, "Golden Gate Bridge"))
    assert rate(steered, BRIDGE_WORDS) >= 0.9
    assert well_formed_rate(steered) >= 0.9
    assert reply_loss(model, steered) <= LOSS_BOUND


def test_honesty_preset_moves_the_style_both_ways(model, prompts, baseline):
    honest = STYLE_MARKERS["honest"]
    more = generate(model, prompts, preset_plan(model, "Honesty"))
    less = generate(model, prompts, preset_plan(model, "Honesty", scale=-1.0))
    assert rate(more, honest) >= rate(baseline, honest) + 0.3
    assert rate(less, honest) <= rate(baseline, honest) - 0.1
    assert well_formed_rate(more) >= 0.9 and well_formed_rate(less) >= 0.9


@pytest.mark.parametrize(
    "preset, words, topic",
    [
        ("Pirate", STYLE_MARKERS["pirate"], None),
        ("Cats", TOPIC_WORDS["cats"], "cats"),
        ("Space", TOPIC_WORDS["space"], "space"),
        ("Ocean", TOPIC_WORDS["ocean"], "ocean"),
    ],
)
def test_more_presets_steer(model, preset, words, topic):
    exclude = ("bridge", topic) if topic else ("bridge",)
    prompts = held_out_prompts(N_PROMPTS, "test", exclude=exclude)
    steered = generate(model, prompts, preset_plan(model, preset))
    base = generate(model, prompts, None)
    assert rate(steered, words) >= rate(base, words) + 0.5
    assert well_formed_rate(steered) >= 0.9


def test_free_text_replies_stay_well_formed(model):
    plan = preset_plan(model, "Golden Gate Bridge")
    assert well_formed_rate(generate(model, FREE_TEXT_PROMPTS, None)) >= 0.8
    assert well_formed_rate(generate(model, FREE_TEXT_PROMPTS, plan)) >= 0.8


def test_generate_without_a_model_uses_the_demo(capsys):
    argv = ["generate", "What should I cook tonight?", "--preset", "Golden Gate Bridge"]
    assert main([*argv, "--seed", "1", "--max-new-tokens", "96"]) == 0
    out = capsys.readouterr().out
    steered, baseline = out.split("--- baseline")
    assert "--- steered (stop" in steered and "golden gate" in steered
    assert "golden gate" not in baseline
