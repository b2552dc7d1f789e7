"""Behavioural tests of the shipped demo world (steering/demo/files, presets/demo-*.json).

They load the shipped files (no training) and check that steering visibly works: the numbers
were measured by ``python -m steering.demo.evaluate`` (docs/demo-world.md) and the bounds leave
a little room. Every batch of prompts runs in one engine admit, so the module takes seconds.
"""

from __future__ import annotations

import os

import pytest

from steering.cli import main
from steering.demo import MODEL_DIR, SAE_DIR, SUGGESTED_PROMPTS, load_demo
from steering.demo.corpus import (
    BRIDGE_WORDS,
    FREE_TEXT_PROMPTS,
    STYLE_MARKERS,
    TOPIC_WORDS,
    held_out_prompts,
    make_corpus,
)
from steering.demo.evaluate import (
    chats,
    generate,
    on_topic_rate,
    preset_plan,
    rate,
    reply_loss,
    well_formed_rate,
)
from steering.demo.features import CONTEXTS, LEFT, RIGHT
from steering.demo.openers import (
    FOOD,
    OPENERS,
    TRAVEL,
    WEEKEND,
    Opener,
    on_topic,
    words,
)
from steering.demo.train import CORPUS_SIZE

N_PROMPTS = 60
LOSS_BOUND = 0.8  # nats per token of steered replies under the unsteered model (measured 0.62)
OPENERS_BOUND = 0.9  # the thirty everyday openers on topic, unsteered (measured 100 %)
GOLDEN_GATE_OPENERS_BOUND = 0.5  # of them bringing in the bridge with the preset (measured 60 %)
CHAT_THIRD_TURN_BOUND = 9  # of ten three-turn chats on topic at their third turn (measured 10)


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


def test_held_out_prompts_and_openers_are_not_in_the_corpus(prompts):
    seen = {user for d in make_corpus(CORPUS_SIZE) for user, _ in d.turns}
    assert len(prompts) >= 50 and not seen & set(prompts)
    assert len(OPENERS) == 30 and not seen & {words(o.text).strip() for o in OPENERS}
    assert "what should i cook tonight ?" in {words(p).strip() for p in FREE_TEXT_PROMPTS}


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
    argv = ["generate", "What should I visit in California?", "--preset", "Golden Gate Bridge"]
    assert main([*argv, "--seed", "2", "--max-new-tokens", "96"]) == 0
    out = capsys.readouterr().out
    steered, baseline = out.split("--- baseline")
    assert "--- steered (stop" in steered and "golden gate" in steered
    assert "golden gate" not in baseline


# What each suggested opener must be about (the judge of steering/demo/openers.py).
SUGGESTED_JUDGES = {
    "Why is the sea salty?": (TOPIC_WORDS["ocean"],),
    "What is your favorite song?": (TOPIC_WORDS["music"],),
    "What should I visit in California?": (TRAVEL,),
    "Any ideas for the weekend?": (WEEKEND,),
    "Why do cats purr?": (TOPIC_WORDS["cats"],),
    "What should I have for breakfast?": (FOOD,),
}


@pytest.mark.parametrize("prompt", SUGGESTED_PROMPTS)
def test_suggested_prompts_get_on_topic_replies(model, prompt):
    opener = Opener(prompt, "suggested", SUGGESTED_JUDGES[prompt])
    # three seeds: the page samples, so a suggestion must work on more than one draw
    replies = [generate(model, [prompt], None, seed=seed)[0] for seed in (0, 1, 2)]
    assert all(on_topic(opener, r.text, r.well_formed) for r in replies), replies
    assert rate(replies, BRIDGE_WORDS) == 0
    # The page's default preset shows on a suggestion: the bridge in at least 2 of 5 draws.
    plan = preset_plan(model, "Golden Gate Bridge")
    steered = [generate(model, [prompt], plan, seed=seed)[0] for seed in range(5)]
    assert rate(steered, BRIDGE_WORDS) >= 0.4, steered


def test_everyday_openers_get_on_topic_replies(model):
    replies = generate(model, [o.text for o in OPENERS], None)
    assert on_topic_rate(replies) >= OPENERS_BOUND
    assert well_formed_rate(replies) >= 0.95
    assert rate(replies, BRIDGE_WORDS) <= 1 / 30  # the bridge stays out unless steered


def test_golden_gate_preset_reaches_everyday_openers(model):
    steered = generate(model, [o.text for o in OPENERS], preset_plan(model, "Golden Gate Bridge"))
    assert rate(steered, BRIDGE_WORDS) >= GOLDEN_GATE_OPENERS_BOUND
    assert well_formed_rate(steered) >= 0.9


def test_three_turn_chats_stay_on_topic(model):
    turns = chats(model)
    assert model.context_length == 256
    last = turns[-1]
    assert sum(on_topic(o, r.text, r.well_formed) for o, r in last) >= CHAT_THIRD_TURN_BOUND
    assert all(r.well_formed for turn in turns for _, r in turn)


def test_sae_labels_are_searchable_words_with_contexts(demo):
    model, sae = demo
    bridge = preset_plan(model, "Golden Gate Bridge").edits[0]
    label = sae.labels[bridge.feature]
    assert "golden gate" in label and "bridge" in label
    for query in ("golden gate", "bridge"):  # what a visitor searches finds the feature
        assert bridge.feature in [i for i, text in sae.labels.items() if query in text]
    live = int((sae.max_activation > 0).sum())
    assert len(sae.labels) == live and len(sae.contexts) == live
    assert all(0 < len(text) < 60 for text in sae.labels.values())
    assert len(set(sae.labels.values())) == len(sae.labels)  # each label names one feature
    for items in sae.contexts.values():
        assert 1 <= len(items) <= CONTEXTS
        assert [c.activation for c in items] == sorted((c.activation for c in items), reverse=True)
        assert all(len(c.left.split()) <= LEFT and len(c.right.split()) <= RIGHT for c in items)
    best = sae.contexts[bridge.feature][0]
    assert best.activation > 0 and best.token
