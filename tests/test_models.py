"""Loading models and finding their decoder layers."""

from __future__ import annotations

import pytest
import torch
from random_saes import random_sae
from tiny_models import CONFIGS, HIDDEN, LAYERS, tiny_gemma3_multimodal, tiny_model, tiny_tokenizer

from steering import ModelLoadError, clamp, count_hooks, find_layers, load_model, steer

EXPECTED = {
    "llama": "model.layers.{i}",
    "mistral": "model.layers.{i}",
    "gemma2": "model.layers.{i}",
    "gemma3": "model.layers.{i}",
    "qwen2": "model.layers.{i}",
    "qwen3": "model.layers.{i}",
    "phi3": "model.layers.{i}",
    "gpt2": "transformer.h.{i}",
    "gpt_neox": "gpt_neox.layers.{i}",
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_layers_found_for_each_architecture(arch):
    model = tiny_model(arch)
    layers, template = find_layers(model)
    assert template == EXPECTED[arch]
    assert len(layers) == LAYERS
    assert layers[2] is model.get_submodule(template.format(i=2))


def test_gemma3_multimodal_nesting():
    model = tiny_gemma3_multimodal()
    layers, template = find_layers(model)
    assert template == "model.language_model.layers.{i}"
    assert len(layers) == LAYERS
    sae = random_sae(HIDDEN, 32, layer=1)
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        before = model(ids).logits
        with steer(model, clamp(sae, 3, 9.0)):
            steered = model(ids).logits
    assert not torch.allclose(before, steered)


class _TupleLayer(torch.nn.Module):
    """A decoder layer of the older kind, returning (hidden_states, attn_weights)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(HIDDEN, HIDDEN)

    def forward(self, h):
        return (h + self.lin(h), None)


class _TupleModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"hidden_size": HIDDEN})()
        self.blocks = torch.nn.ModuleList(_TupleLayer() for _ in range(3))

    def forward(self, h):
        for block in self.blocks:
            h = block(h)[0]
        return h


def test_unknown_architecture_names_the_override():
    model = _TupleModel()
    with pytest.raises(
        ModelLoadError, match=r"could not find the decoder layers of _TupleModel.*layers="
    ):
        find_layers(model)
    layers, template = find_layers(model, "blocks.{i}")
    assert template == "blocks.{i}" and len(layers) == 3
    with pytest.raises(ModelLoadError, match="must contain"):
        find_layers(model, "blocks")


def test_layers_that_return_tuples_are_steered():
    from steering.models import SteerableModel

    model = _TupleModel()
    layers, template = find_layers(model, "blocks.{i}")
    wrapped = SteerableModel(model, None, layers, template)
    sae = random_sae(HIDDEN, 16, layer=1)
    x = torch.randn(1, 5, HIDDEN)
    before = model(x)
    with steer(wrapped, clamp(sae, 2, 5.0)):
        steered = model(x)
        assert count_hooks(model) == 1
    assert not torch.allclose(before, steered)
    assert torch.equal(model(x), before)


def test_load_model_from_a_local_folder(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.num_layers == LAYERS and loaded.hidden_size == HIDDEN
    assert loaded.layer_template == "model.layers.{i}"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.convert_tokens_to_ids("bridge") == 9
    assert not loaded.model.training


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match=r"not a local folder.*`hf download .*huggingface-cli download"
    ):
        load_model("some-org/model-that-is-not-cached")


def test_bad_names_and_dtypes():
    with pytest.raises(ModelLoadError, match="not a local folder, and not a Hub id"):
        load_model("./no/such/folder")
    with pytest.raises(ModelLoadError, match="dtype 'float8' is not one of"):
        load_model("x/y", dtype="float8")
