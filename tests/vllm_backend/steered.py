"""Worlds for parity tests: a model on both backends, SAEs of every kind, and the reference
reply of a plan (transformers' own ``generate`` with this project's hooks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from steering.engine import Engine, eos_token_ids
from steering.hooks import steer
from steering.loop import EngineLoop
from steering.models import SteerableModel
from steering.plan import SteeringPlan
from steering.requests import Request, Row, encode_chat
from steering.sae import SAE
from steering.sampling import SamplingParams
from steering.vllm.backend import VLLMSettings, start_vllm_backend

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@dataclass
class World:
    """One model with its SAEs behind both backends."""

    model: SteerableModel
    saes: dict[str, SAE]
    own: EngineLoop
    vllm: Any
    prompts: list[tuple[int, ...]] = field(default_factory=list)

    def backend(self, name: str) -> Any:
        return self.own if name == "own" else self.vllm

    def close(self) -> None:
        self.own.close()
        self.vllm.close()


def start_world(model: SteerableModel, folder: str, saes: dict[str, SAE], **settings: Any) -> World:
    options = {"dtype": "float32", "enforce_eager": True, "multiprocess": False, **settings}
    vllm = start_vllm_backend(model, list(saes.values()), VLLMSettings(folder, **options))
    prompts = [
        encode_chat(model.tokenizer, "hello how are you"),
        encode_chat(model.tokenizer, "the golden gate bridge is big and red"),
    ]
    return World(model, saes, EngineLoop(Engine(model)), vllm, prompts)


def run(backend: Any, rows: list[tuple[tuple[int, ...], SteeringPlan | None]], sampling=GREEDY):
    """Every row's token ids and events, rows submitted together as one request."""
    request = Request(tuple(Row(p, plan) for p, plan in rows), sampling)
    events = list(backend.submit(request))
    errors = [e.error for e in events if e.error is not None]
    if errors:
        raise errors[0]
    tokens = [[e.token_id for e in events if e.row == i] for i in range(len(rows))]
    return tokens, events


def reference(model: SteerableModel, prompt: tuple[int, ...], plan, n: int = 12) -> list[int]:
    """Greedy tokens of transformers' ``generate`` steered by this project's hooks, cut after
    the first end-of-reply token (as both backends stop there)."""
    net = model.model
    ids = torch.tensor([prompt])
    with torch.inference_mode(), steer(model, plan or SteeringPlan.off()):
        out = net.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=model.tokenizer.pad_token_id or 0,
        )
    tokens = out[0, len(prompt) :].tolist()
    eos = eos_token_ids(model)
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
