"""A model spread over several devices (``device_map="auto"``): each hook builds its tables on
its own layer's device, whatever device the SAE is on. Without several GPUs a layer is put on
the meta device by hand, standing for a second GPU (it holds no data, but says where it is)."""

from __future__ import annotations

import torch
from random_saes import random_sae
from tiny_models import HIDDEN, tiny_model

from steering import FeatureEdit, SteeringPlan, hooks
from steering.demo import MODEL_DIR, load_demo
from steering.engine import Engine
from steering.interventions import LayerIntervention
from steering.models import load_model
from steering.requests import build_request, collect
from steering.sampling import SamplingParams


def test_each_hook_builds_its_tables_on_its_layers_device(monkeypatch):
    model = tiny_model("llama")
    model.model.layers[2].to("meta")  # as accelerate would place it on a second device
    near, far = random_sae(HIDDEN, 32, layer=1), random_sae(HIDDEN, 32, layer=2)
    plan = SteeringPlan((FeatureEdit(near, 3, "clamp", 5.0), FeatureEdit(far, 4, "add", 2.0)))
    asked: dict[int, str] = {}

    class Recorded(LayerIntervention):
        @classmethod
        def build(cls, edits, n_rows, device, *, per_row):
            asked[edits[0][1].sae.hook.layer] = torch.device(device).type
            # meta tensors hold no values to build from: build on the CPU once recorded
            return LayerIntervention.build(edits, n_rows, torch.device("cpu"), per_row=per_row)

    monkeypatch.setattr(hooks, "LayerIntervention", Recorded)
    hooks.prepare(model, plan)
    assert asked == {1: "cpu", 2: "meta"}
    assert far.W_dec.device.type == "cpu"  # the SAE itself stays where it was loaded


def test_device_map_auto_loads_and_steers_as_one_device():
    demo, sae = load_demo()
    spread = load_model(str(MODEL_DIR), dtype="float32", device_map="auto")
    plan = SteeringPlan((FeatureEdit(sae, int(sae.d_sae // 3), "clamp", 4.0, unit="max_act"),))
    replies = []
    for model in (demo, spread):
        request = build_request(
            model, "Tell me about your day.", plan, SamplingParams(temperature=0, max_new_tokens=16)
        )
        engine = Engine(model)
        engine.admit([request])
        events = []
        for _ in range(64):
            events += engine.step()
            if not engine.live:
                break
        replies.append(collect(events, 1)[0].text)
    assert replies[0] == replies[1] and len(replies[0]) > 10
