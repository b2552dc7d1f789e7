"""The demo world's metrics: does steering visibly work, and do replies stay well-formed?

``python -m steering.demo.evaluate`` prints them as JSON (``--out`` writes them too) and draws
the Golden Gate rate against the multiplier into ``docs/demo-bridge-curve.png``. The tests in
tests/test_demo_world.py check the same metrics on the shipped files.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import Engine
from ..limits import Limits
from ..models import SteerableModel
from ..plan import SteeringPlan
from ..requests import build_request, encode_chat
from ..sampling import SamplingParams
from .corpus import (
    BRIDGE_WORDS,
    PRESET_CONCEPTS,
    STYLE_MARKERS,
    concept_words,
    held_out_prompts,
    mentions,
)
from .openers import OPENERS, Opener, on_topic

MAX_NEW_TOKENS = 96
CURVE_MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0)
DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass(frozen=True)
class Reply:
    """One generated reply, its finish reason and its token ids."""

    prompt: str | list[dict[str, str]]  # one user message, or a chat
    text: str
    finish_reason: str
    tokens: tuple[int, ...]

    @property
    def well_formed(self) -> bool:
        """Ended with the end-of-turn token within the length limit."""
        return self.finish_reason == "stop"


def generate(
    model: SteerableModel,
    prompts: list[str] | list[list[dict[str, str]]],
    plan: SteeringPlan | None,
    seed: int = 0,
    temperature: float = 0.7,
) -> list[Reply]:
    """One reply per prompt (a user message or a chat of messages), all in one batch; prompt i
    samples with seed ``seed + i``."""
    limits = Limits(max_batch=len(prompts))
    engine = Engine(model, limits=limits)
    requests = [
        build_request(
            model,
            p,
            plan,
            SamplingParams(temperature=temperature, max_new_tokens=MAX_NEW_TOKENS, seed=seed + i),
            limits=limits,
        )
        for i, p in enumerate(prompts)
    ]
    texts = {r.id: "" for r in requests}
    finish: dict[int, str] = {}
    tokens: dict[int, list[int]] = {r.id: [] for r in requests}
    events = engine.admit(requests)
    while True:
        for e in events:
            texts[e.request_id] += e.delta
            if e.token_id is not None and e.finish_reason != "cancelled":
                tokens[e.request_id].append(e.token_id)
            if e.finish_reason:
                finish[e.request_id] = e.finish_reason
        if not engine.live:
            break
        events = engine.step()
    return [
        Reply(p, texts[r.id].strip(), finish[r.id], tuple(tokens[r.id]))
        for p, r in zip(prompts, requests)
    ]


def rate(replies: list[Reply], words: tuple[str, ...]) -> float:
    return sum(mentions(r.text, words) for r in replies) / len(replies)


def well_formed_rate(replies: list[Reply]) -> float:
    return sum(r.well_formed for r in replies) / len(replies)


@torch.inference_mode()
def reply_loss(model: SteerableModel, replies: list[Reply]) -> float:
    """Mean per-token loss (nats) of the replies' tokens under the unsteered model."""
    seqs = [(list(encode_chat(model.tokenizer, r.prompt)), list(r.tokens)) for r in replies]
    width = max(len(p) + len(t) for p, t in seqs)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad)
    labels = torch.full((len(seqs), width), -100)
    for row, (prompt, reply) in enumerate(seqs):
        ids[row, : len(prompt) + len(reply)] = torch.tensor(prompt + reply)
        labels[row, len(prompt) : len(prompt) + len(reply)] = torch.tensor(reply)
    logits = model.model(input_ids=ids, attention_mask=(ids != pad).long()).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="sum"
    )
    return float(loss / (labels != -100).sum())


def preset_plan(model: SteerableModel, name: str, scale: float = 1.0) -> SteeringPlan:
    from ..presets.library import PresetRegistry
    from ..presets.saes import SAEResolver
    from ..presets.to_plan import plan_for_presets

    entry = PresetRegistry.discover().get(name)
    plan, _ = plan_for_presets([entry], model, SAEResolver(device=model.device), scale=scale)
    return plan


def bridge_curve(model: SteerableModel, prompts: list[str]) -> list[dict[str, float]]:
    """Bridge rate, well-formed rate and fluency (nats/token under the unsteered model) of the
    Golden Gate preset's features at each multiple of their max activation (the preset's own
    value is replaced by the multiplier), by one ``steering sweep`` over ``CURVE_MULTIPLIERS``."""
    from ..features.sweep import Concept, calibrate

    plan = preset_plan(model, "demo-golden-gate-bridge")
    unit = plan.edits[0].value
    words = Concept.regex("|".join(map(re.escape, BRIDGE_WORDS)))  # as ``mentions`` reads them
    sweep = calibrate(
        model,
        plan.scaled(1 / unit),
        CURVE_MULTIPLIERS,
        prompts,
        concept=words,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    return [
        {
            "multiplier": p.multiplier,
            "bridge": p.concept_rate,
            "well_formed": p.well_formed,
            "fluency": p.fluency,
        }
        for p in sweep.points
    ]


def style_metrics(model: SteerableModel, prompts: list[str], preset: str, style: str) -> dict:
    """How often replies show ``style``'s markers with the preset at scale 0, 1 and -1."""
    markers = STYLE_MARKERS[style]
    out = {}
    for scale in (0.0, 1.0, -1.0):
        replies = generate(model, prompts, preset_plan(model, preset, scale) if scale else None)
        out[f"scale {scale:g}"] = {
            "rate": rate(replies, markers),
            "well_formed": well_formed_rate(replies),
        }
    return out


def on_topic_rate(replies: list[Reply]) -> float:
    """The share of replies to ``OPENERS`` (in order) that are on their opener's topic."""
    return sum(on_topic(o, r.text, r.well_formed) for o, r in zip(OPENERS, replies)) / len(replies)


def opener_metrics(model: SteerableModel) -> dict:
    """The thirty everyday openers unsteered (on topic, well-formed, bringing up the bridge by
    themselves) and with the Golden Gate preset."""
    texts = [o.text for o in OPENERS]
    base = generate(model, texts, None)
    steered = generate(model, texts, preset_plan(model, "demo-golden-gate-bridge"))
    return {
        "prompts": len(texts),
        "on_topic": on_topic_rate(base),
        "well_formed": well_formed_rate(base),
        "bridge": rate(base, BRIDGE_WORDS),
        "golden_gate": {
            "bridge": rate(steered, BRIDGE_WORDS),
            "on_topic": on_topic_rate(steered),
            "well_formed": well_formed_rate(steered),
        },
        "three_turn_chats": chat_metrics(model),
        "replies": {o.text: r.text for o, r in zip(OPENERS, base)},
    }


def chats(model: SteerableModel) -> list[list[tuple[Opener, Reply]]]:
    """Ten three-turn chats: chat i asks ``OPENERS[i]``, ``[i + 10]`` and ``[i + 20]`` in turn,
    each after the model's own earlier replies; per turn, the (opener, reply) of every chat."""
    plan = [[OPENERS[i], OPENERS[i + 10], OPENERS[i + 20]] for i in range(10)]
    history: list[list[dict[str, str]]] = [[] for _ in plan]
    turns = []
    for t in range(3):
        for h, chat in zip(history, plan):
            h.append({"role": "user", "content": chat[t].text})
        replies = generate(model, [list(h) for h in history], None, seed=100 * t)
        for h, r in zip(history, replies):
            h.append({"role": "assistant", "content": r.text})
        turns.append([(chat[t], r) for chat, r in zip(plan, replies)])
    return turns


def chat_metrics(model: SteerableModel) -> dict:
    """Per turn of ``chats``: the share of on-topic replies and of well-formed ones."""
    return {
        f"turn {t + 1}": {
            "on_topic": sum(on_topic(o, r.text, r.well_formed) for o, r in turn) / len(turn),
            "well_formed": sum(r.well_formed for _, r in turn) / len(turn),
        }
        for t, turn in enumerate(chats(model))
    }


def evaluate(model: SteerableModel, n: int = 60) -> dict:
    """Every metric of the demo world on ``n`` held-out prompts (what docs/demo-world-metrics.json
    holds)."""

    prompts = held_out_prompts(n, "test")
    results: dict = {"prompts": len(prompts)}
    baseline = generate(model, prompts, None)
    results["baseline"] = {
        "well_formed": well_formed_rate(baseline),
        "loss": reply_loss(model, baseline),
    }
    for slug, concept in PRESET_CONCEPTS.items():
        exclude = (concept,) if concept in concept_words() else ()
        ps = held_out_prompts(n, "test", exclude=tuple({"bridge", *exclude}))
        steered = generate(model, ps, preset_plan(model, slug))
        base = generate(model, ps, None)
        words = concept_words()[concept]
        results[slug] = {
            "steered_rate": rate(steered, words),
            "baseline_rate": rate(base, words),
            "well_formed": well_formed_rate(steered),
            "loss": reply_loss(model, steered),
        }
    results["honesty"] = style_metrics(model, prompts, "demo-honesty", "honest")
    results["bridge_curve"] = bridge_curve(model, prompts)
    results["openers"] = opener_metrics(model)
    return results


def main() -> None:
    """``python -m steering.demo.evaluate``: evaluate the shipped demo world and write the metrics
    and the Golden Gate curve."""
    from . import load_demo
    from .plot import draw_curve

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the metrics to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    model, _ = load_demo()
    results = evaluate(model)
    results["seconds"] = round(time.time() - start, 1)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    DOCS.mkdir(exist_ok=True)
    draw_curve(results["bridge_curve"], DOCS / "demo-bridge-curve.png")


if __name__ == "__main__":
    main()
