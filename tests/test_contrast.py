"""Search by contrast: exact against a brute-force computation on a tiny random model, and the
demo world's Golden Gate preset features found by contrasting bridge prompts with others."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from random_saes import random_sae
from tiny_models import HIDDEN, tiny_model, tiny_tokenizer

from steering.errors import LimitError, RequestError
from steering.features.contrast import (
    contrast,
    prompt_tokens,
    rank_contrast,
)
from steering.features.neutral import EVERYDAY_PROMPTS, demo_prompts, neutral_prompts
from steering.limits import Limits
from steering.models import SteerableModel, find_layers

A = ["the golden gate bridge", "the red bridge is big", "golden gate san francisco"]
B = ["hello how are you", "i am fine", "the cat is big", "a dog is a cat"]
# 12 everyday prompts in the tiny tokenizer's words, as a built-in baseline
BASELINE = [
    f"{w} {v}" for w in ("hello", "the cat", "a dog") for v in ("is big", "is fine", "how", "i am")
]
PRESET = Path(__file__).resolve().parents[1] / "presets" / "demo-golden-gate-bridge.json"


@pytest.fixture(scope="module")
def tiny() -> SteerableModel:
    net = tiny_model("llama")
    layers, template = find_layers(net)
    return SteerableModel(net, tiny_tokenizer(), layers, template)


def brute_force_means(model: SteerableModel, sae, prompt: str) -> torch.Tensor:
    """(d_sae,) the full ``sae.encode`` of the residual stream (a full forward pass with the
    test's own hook) averaged over the prompt's words: the tokens between the user marker
    and the end-of-turn marker of the tiny template."""
    ids = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = model.tokenizer(ids, add_special_tokens=False)["input_ids"]
    start, end = ids.index(4) + 1, ids.index(6)  # <|user|> ... <|end|>
    seen = []
    handle = model.layers[sae.hook.layer].register_forward_hook(
        lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model.model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return sae.encode(seen[0][0])[start:end].double().mean(0)


@pytest.mark.parametrize("by", ["difference", "effect_size"])
def test_contrast_equals_a_brute_force_computation(tiny, by, monkeypatch):
    import steering.features.contrast as module

    monkeypatch.setattr(module, "STATS_BLOCK", 13)  # blocks of features that do not divide 96
    sae = random_sae(HIDDEN, 96, 1, seed=3)
    sae.labels = {7: "seven", 31: "thirty-one"}
    found = contrast(tiny, sae, A, B, top=10, by=by)
    a = torch.stack([brute_force_means(tiny, sae, p) for p in A])
    b = torch.stack([brute_force_means(tiny, sae, p) for p in B])
    rows = []
    for i in range(sae.d_sae):
        xa, xb = a[:, i].tolist(), b[:, i].tolist()
        ma, mb = sum(xa) / len(xa), sum(xb) / len(xb)
        ss = sum((x - ma) ** 2 for x in xa) + sum((x - mb) ** 2 for x in xb)
        sd = math.sqrt(ss / (len(xa) + len(xb) - 2))
        d = (ma - mb) / sd if sd > 0 else (0.0 if ma == mb else math.copysign(math.inf, ma - mb))
        rows.append((d, ma - mb, i, ma, mb))
    rows.sort(key=lambda r: (-r[1], -r[0], r[2]) if by == "difference" else (-r[0], -r[1], r[2]))
    assert [f.index for f in found] == [r[2] for r in rows[:10]]
    for f, (d, diff, i, ma, mb) in zip(found, rows):
        assert f.mean_a == pytest.approx(ma, rel=1e-5, abs=1e-6)
        assert f.mean_b == pytest.approx(mb, rel=1e-5, abs=1e-6)
        assert f.difference == pytest.approx(diff, rel=1e-5, abs=1e-6)
        assert f.effect_size == pytest.approx(d, rel=1e-4)
        assert f.label == sae.labels.get(i)
    assert found[0].difference > 0 and found[0].effect_size > 0
    assert len({f.index for f in found} & {7, 31}) >= 1  # labels are checked on a listed one


def test_zero_spread_gives_infinite_or_zero_effect_sizes_and_ties_rank_by_difference():
    # feature 0: never varies, equal means -> 0; features 1, 2: one prompt against zeros,
    # perfectly separated -> inf, the larger difference first; feature 3: lower in A -> -inf.
    a = torch.tensor([[1.0, 0.5, 2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 3.0]])
    found = rank_contrast(a, b, top=4, labels={2: "two"}, by="effect_size")
    assert [(f.index, f.effect_size, f.difference) for f in found] == [
        (2, math.inf, 2.0),
        (1, math.inf, 0.5),
        (0, 0.0, 0.0),
        (3, -math.inf, -3.0),
    ]
    assert [f.label for f in found] == ["two", None, None, None]
    # By difference, equal differences by effect size: feature 4 varies (finite d).
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    found = rank_contrast(a, b, top=3)
    assert [(f.index, f.difference) for f in found] == [(0, 1.0), (4, 1.0), (1, 0.0)]
    # feature 4: A = (2, 0), B = (0,): pooled sd = sqrt((1 + 1) / (3 - 2)), d = 1 / sqrt 2
    assert found[0].effect_size == math.inf
    assert found[1].effect_size == pytest.approx(2**-0.5)


def test_a_prompt_is_averaged_over_its_own_words_only(tiny):
    tok = tiny_tokenizer()
    rendered = prompt_tokens(tok, "the golden gate bridge")
    assert [rendered.token_ids[i] for i in rendered.positions] == [7, 10, 11, 9]
    # A word out of the vocabulary is <unk>, a special token: left out.
    rendered = prompt_tokens(tok, "the golden zebra")
    assert [rendered.token_ids[i] for i in rendered.positions] == [7, 10]
    # A template that writes plain words around the message: they are not the prompt's.
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}how are you {{ m['content'] }} i am fine{% endfor %}"
    )
    rendered = prompt_tokens(tok, "the golden gate bridge")
    assert tok.convert_ids_to_tokens(list(rendered.token_ids)) == [
        "<bos>", "how", "are", "you", "the", "golden", "gate", "bridge", "i", "am", "fine",
    ]  # fmt: skip
    assert rendered.positions == (4, 5, 6, 7)


def test_bad_sets_and_tops_are_refused_naming_the_value(tiny):
    sae = random_sae(HIDDEN, 32, 1)
    with pytest.raises(RequestError, match="against: at least one prompt"):
        contrast(tiny, sae, A, [])
    needed = "at least 2 are needed in each set for an effect size (a spread within the set)"
    with pytest.raises(RequestError, match=re.escape(f"prompts: 1 distinct prompt, {needed}")):
        contrast(tiny, sae, A[:1], B)
    with pytest.raises(RequestError, match=re.escape(f"prompts: 1 distinct prompt, {needed}")):
        contrast(tiny, sae, A[:1])  # against the built-in baseline, too
    words = f"against: 1 distinct prompt (3 duplicates dropped), {needed}"
    with pytest.raises(RequestError, match=re.escape(words)):
        contrast(tiny, sae, A, [B[0]] * 4)
    with pytest.raises(LimitError, match="7 prompts in both sets, at most 5"):
        contrast(tiny, sae, A, B, limits=Limits(max_contrast_prompts=5))
    with pytest.raises(LimitError, match=r"prompts: 7 prompts, at most 5 \(max_contrast_prompts\)"):
        contrast(tiny, sae, A + B, limits=Limits(max_contrast_prompts=5))


def test_the_built_in_baseline_is_not_counted_against_the_limit(tiny, monkeypatch):
    import steering.features.neutral as neutral

    sae = random_sae(HIDDEN, 32, 1)
    monkeypatch.setattr(neutral, "neutral_prompts", lambda model: BASELINE)
    assert contrast(tiny, sae, A, top=3, limits=Limits(max_contrast_prompts=5)) == contrast(
        tiny, sae, A, BASELINE, top=3
    )


def test_duplicates_count_once(tiny):
    sae = random_sae(HIDDEN, 32, 1)
    once = contrast(tiny, sae, A, B, top=32, by="effect_size")
    assert contrast(tiny, sae, [*A, A[0], A[0]], [B[1], *B, B[1]], top=32, by="effect_size") == once
    with pytest.raises(LimitError, match=r"prompts\.0: 22 characters, at most 20"):
        contrast(tiny, sae, A, B, limits=Limits(max_contrast_prompt_chars=20))
    with pytest.raises(RequestError, match=r"top: 0 must be an integer in 1\.\.100"):
        contrast(tiny, sae, A, B, top=0)
    with pytest.raises(RequestError, match="no tokens of its own"):
        contrast(tiny, sae, A, ["", *B])


def test_the_neutral_baseline_is_the_demo_worlds_for_the_demo_model(tiny):
    assert neutral_prompts(tiny) == EVERYDAY_PROMPTS
    demo = demo_prompts()
    assert len(demo) >= 20 and not any("san francisco" in p.lower() for p in demo)


@pytest.fixture(scope="module")
def demo():
    from steering.demo import load_demo

    return load_demo()


def test_the_golden_gate_features_top_a_contrast_of_bridge_prompts(demo):
    """Prompts that bring up the bridge as the demo corpus does (its bridge cues and bridge
    questions) against held-out prompts on the other topics: the two features of the shipped
    Golden Gate preset (found by a steering test) are in the top 3, by difference."""
    from steering.demo.corpus import BRIDGE_CUES, TOPIC_QUESTIONS, held_out_prompts

    model, sae = demo
    bridge = [*BRIDGE_CUES, *TOPIC_QUESTIONS["bridge"]]
    rest = held_out_prompts(24, "test", exclude=("bridge",))
    preset = {e["feature"] for e in json.loads(PRESET.read_text())["edits"]}
    assert preset == {660, 704}
    found = contrast(model, sae, bridge, rest, top=3)
    assert preset <= {f.index for f in found}, found
    assert all(f.difference > 0.3 and f.effect_size > 1 for f in found)
    assert {f.label for f in found if f.index in preset} == {
        "golden gate bridge (san francisco landmark)",
        "golden gate bridge (san francisco landmark), feature 2",
    }
    # Against the demo world's neutral baseline, too.
    assert preset <= {f.index for f in contrast(model, sae, bridge, top=3)}


def test_the_command_prints_what_the_library_finds(demo, tmp_path, capsys):
    from steering.cli import main
    from steering.demo.corpus import BRIDGE_CUES, TOPIC_QUESTIONS
    from steering.features.contrast import contrast_json

    model, sae = demo
    bridge = [*BRIDGE_CUES, *TOPIC_QUESTIONS["bridge"]]
    rest = TOPIC_QUESTIONS["cats"] + TOPIC_QUESTIONS["space"]
    (tmp_path / "a.txt").write_text("\n".join(bridge[:-1]) + f"\n\n{bridge[0]}\n")
    (tmp_path / "b.txt").write_text("\n".join(rest) + "\n")
    argv = [str(tmp_path / "a.txt"), "--prompt", bridge[-1], "--against", str(tmp_path / "b.txt")]
    assert main(["contrast", *argv, "--top", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = contrast(model, sae, bridge, rest, top=4)
    assert printed["features"] == [contrast_json(f) for f in expected]
    assert (printed["prompts"], printed["against"], printed["by"]) == (8, 8, "difference")
    assert printed["duplicates"] == 1
    assert main(["contrast", *argv, "--top", "2", "--by", "effect_size"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "8 prompts against 8 prompts (1 duplicate dropped), ranked by effect size"
    assert lines[1].split() == ["feature", "label", "mean", "A", "mean", "B", "difference",
                                "effect", "size"]  # fmt: skip
    top = contrast(model, sae, bridge, rest, top=2, by="effect_size")
    assert [int(line.split()[0]) for line in lines[2:]] == [f.index for f in top]
    too_few = ["contrast", "--prompt", "why ?", "--against-prompt", "what ?"]
    assert main(too_few) == 1  # an error, no trace
    assert "prompts: 1 distinct prompt, at least 2 are needed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\n \n", "holds no prompts (give one per line)"),
        (b"\xff\xfe\x00a", "is not UTF-8 text (byte 0 is 0xff)"),
    ],
)
def test_a_given_prompt_file_that_holds_no_prompts_is_an_error(tmp_path, capsys, content, words):
    from steering.cli import main

    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_bytes(content)
    good.write_text("\n".join(A) + "\n")
    assert main(["contrast", str(good), "--against", str(bad)]) == 1
    assert capsys.readouterr().err == f"error: --against: {bad} {words}\n"
    assert main(["contrast", str(bad), "--against", str(good)]) == 1
    assert capsys.readouterr().err == f"error: FILE: {bad} {words}\n"


def test_the_command_names_a_prompt_by_its_file_and_line(tmp_path, capsys):
    from steering.cli import main

    path = tmp_path / "a.txt"
    path.write_text("the golden gate\n\n" + "x " * 3000 + "\n")
    against = ["--against-prompt", "cats", "--against-prompt", "dogs"]
    assert main(["contrast", str(path), *against]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: FILE {path} line 3: 3004 tokens, at most 256 (max_prompt_tokens 2048, the "
        "model's context 256)"
    )
    assert main(["contrast", "--prompt", "a b", "--prompt", "x " * 3000]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --prompt 2: 3004 tokens")


def test_prompts_that_read_the_same_tokens_count_once(demo):
    """Texts that differ only in spaces (or case, for the demo's uncased tokenizer) are one
    prompt to the model: too few distinct prompts is refused, and a repeat changes nothing."""
    model, sae = demo
    others = ["why do cats purr ?", "what is the moon made of ?"]
    with pytest.raises(RequestError, match="prompts: 1 distinct prompt once tokenized"):
        contrast(model, sae, ["the ocean", "the  ocean ", "The ocean"], others, top=3)
    two = ["the ocean is deep", "the sea is salty"]
    assert contrast(model, sae, [*two, "The  ocean is deep"], others, top=5) == contrast(
        model, sae, two, others, top=5
    )
