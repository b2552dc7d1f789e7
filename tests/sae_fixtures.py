"""Tiny SAEs written in each public format, laid out as the real Hub repos lay them out.

Each writer returns a ``Written``: the path to give ``load_sae`` and the tensors exactly as
stored (original key names and orientations), so tests can compute the format's own forward pass
from them independently of the loaders. Weights are scaled so pre-activations are O(1) for
inputs from ``inputs``; thresholds are O(0.5), so some features fire and some are gated off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

D_IN, D_SAE = 16, 32


@dataclass
class Written:
    path: Path
    tensors: dict[str, Tensor]
    config: dict[str, Any] = field(default_factory=dict)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(n: int = 64, seed: int = 99, scale: float = 1.0) -> Tensor:
    return torch.randn(n, D_IN, generator=gen(seed)) * scale


def _encoder(g: torch.Generator, shape: tuple[int, int]) -> Tensor:
    return torch.randn(*shape, generator=g) / D_IN**0.5


def _vector(g: torch.Generator, n: int, scale: float = 0.1) -> Tensor:
    return torch.randn(n, generator=g) * scale


def _thresholds(g: torch.Generator) -> Tensor:
    return torch.rand(D_SAE, generator=g) * 0.6 + 0.2


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# ---- SAELens ----


def saelens_tensors(architecture: str, seed: int = 0, d_in: int = D_IN) -> dict[str, Tensor]:
    g = gen(seed)
    tensors = {
        "W_enc": torch.randn(d_in, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, d_in, generator=g) * 0.5,
        "b_dec": _vector(g, d_in),
    }
    if architecture == "gated":
        tensors |= {
            "b_gate": _vector(g, D_SAE),
            "b_mag": _vector(g, D_SAE),
            "r_mag": _vector(g, D_SAE, 0.3),
        }
    else:
        tensors["b_enc"] = _vector(g, D_SAE)
    if architecture == "jumprelu":
        tensors["threshold"] = _thresholds(g)
    return tensors


def saelens_v6_cfg(architecture: str, hook: str, **extra: Any) -> dict[str, Any]:
    """A config as SAELens 6 ``save_inference_model`` writes it."""
    return {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": architecture != "jumprelu",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.18.0",
            "model_name": "tiny-gpt",
            "hook_name": hook,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": 128,
        },
        **extra,
    }


def write_saelens(
    root: Path,
    cfg: dict[str, Any],
    tensors: dict[str, Tensor],
    folder: str = "blocks.3.hook_resid_post",
    sparsity: Tensor | None = None,
) -> Written:
    path = root / "tiny-saes" / folder
    _write_json(path / "cfg.json", cfg)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "sae_weights.safetensors")
    if sparsity is not None:
        save_file({"sparsity": sparsity}, path / "sparsity.safetensors")
    return Written(path, tensors, cfg)


# ---- Gemma Scope 1 and 2 ----


def gemma_tensors(seed: int = 1, lowercase: bool = False) -> dict[str, Tensor]:
    g = gen(seed)
    w = "w_" if lowercase else "W_"
    return {
        f"{w}enc": _encoder(g, (D_IN, D_SAE)),
        f"{w}dec": torch.randn(D_SAE, D_IN, generator=g) * 0.5,
        "b_enc": _vector(g, D_SAE),
        "b_dec": _vector(g, D_IN),
        "threshold": _thresholds(g),
    }


def write_gemma_scope(
    root: Path,
    layer: int = 5,
    repo: str = "gemma-scope-2b-pt-res",
    seed: int = 1,
    lowercase: bool = False,
) -> Written:
    path = root / repo / f"layer_{layer}" / "width_16k" / "average_l0_71"
    path.mkdir(parents=True)
    tensors = gemma_tensors(seed, lowercase)
    np.savez(path / "params.npz", **{k: v.numpy() for k, v in tensors.items()})
    return Written(path, tensors)


def gemma_scope_2_config(layer: int, **extra: Any) -> dict[str, Any]:
    hook = f"model.layers.{layer}.output"
    return {
        "width": D_SAE,
        "model_name": "google/gemma-3-1b-pt",
        "architecture": "jump_relu",
        "l0": 40,
        "affine_connection": False,
        "hf_hook_point_in": hook,
        "hf_hook_point_out": hook,
        "type": "sae",
        **extra,
    }


def write_gemma_scope_2(
    root: Path,
    layer: int = 7,
    site: str = "resid_post",
    config: dict[str, Any] | None = None,
    seed: int = 2,
    extra_tensors: dict[str, Tensor] | None = None,
) -> Written:
    path = root / "gemma-scope-2-1b-pt" / site / f"layer_{layer}_width_16k_l0_medium"
    path.mkdir(parents=True)
    tensors = gemma_tensors(seed, lowercase=True) | (extra_tensors or {})
    save_file(tensors, path / "params.safetensors")
    if config is not None:
        _write_json(path / "config.json", config)
    return Written(path, tensors, config or {})


# ---- EleutherAI sparsify ----


def write_sparsify(
    root: Path, folder: str = "layers.4", k: int = 6, seed: int = 3, **cfg_extra: Any
) -> Written:
    g = gen(seed)
    encoder = _encoder(g, (D_SAE, D_IN))
    tensors = {
        "encoder.weight": encoder,
        "encoder.bias": _vector(g, D_SAE),
        "W_dec": encoder + torch.randn(D_SAE, D_IN, generator=g) * 0.1,
        "b_dec": _vector(g, D_IN),
    }
    cfg = {
        "expansion_factor": 2,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "activation": "topk",
        "d_in": D_IN,
        **cfg_extra,
    }
    path = root / "sae-tiny-2x" / folder
    _write_json(path / "cfg.json", cfg)
    save_file(tensors, path / "sae.safetensors")
    _write_json(root / "sae-tiny-2x" / "config.json", {"model": "EleutherAI/pythia-tiny"})
    return Written(path, tensors, cfg)


# ---- Goodfire ----


def write_goodfire(root: Path, layer: int = 19, seed: int = 4) -> Written:
    g = gen(seed)
    tensors = {
        "encoder_linear.weight": _encoder(g, (D_SAE, D_IN)),
        "encoder_linear.bias": _vector(g, D_SAE),
        "decoder_linear.weight": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
        "decoder_linear.bias": _vector(g, D_IN),
    }
    name = f"Llama-3.1-8B-Instruct-SAE-l{layer}"
    path = root / name / f"{name}.pth"
    path.parent.mkdir(parents=True)
    torch.save(tensors, path)
    return Written(path, tensors)


# ---- Llama Scope ----


def llama_scope_hyperparams(layer: int, **extra: Any) -> dict[str, Any]:
    hook = f"blocks.{layer}.hook_resid_post"
    return {
        "d_model": D_IN,
        "d_sae": D_SAE,
        "expansion_factor": 2,
        "hook_point_in": hook,
        "hook_point_out": hook,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.5,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 6.0, "out": 9.0},
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "sparsity_include_decoder_norm": True,
        "top_k": 8,
        "dtype": "torch.bfloat16",
        **extra,
    }


def write_llama_scope(root: Path, layer: int = 15, seed: int = 5, **extra: Any) -> Written:
    """Stored in bfloat16, as the real checkpoints are."""
    g = gen(seed)
    tensors = {
        "encoder.weight": _encoder(g, (D_SAE, D_IN)),
        "encoder.bias": _vector(g, D_SAE),
        "decoder.weight": torch.randn(D_IN, D_SAE, generator=g) * 0.4,
        "decoder.bias": _vector(g, D_IN),
    }
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    hp = llama_scope_hyperparams(layer, **extra)
    path = root / "Llama3_1-8B-Base-LXR-8x" / f"Llama3_1-8B-Base-L{layer}R-8x"
    _write_json(path / "hyperparams.json", hp)
    (path / "checkpoints").mkdir()
    save_file(tensors, path / "checkpoints" / "final.safetensors")
    return Written(path, tensors, hp)


# ---- dictionary_learning ----


def dictionary_learning_state(
    dict_class: str, seed: int = 6, threshold: float = 0.4, k: int = 5
) -> dict[str, Tensor]:
    g = gen(seed)
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):  # nn.Parameter layout
        state = {
            "W_enc": _encoder(g, (D_IN, D_SAE)),
            "b_enc": _vector(g, D_SAE),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.5,
            "b_dec": _vector(g, D_IN),
        }
    else:  # nn.Linear layout
        state = {
            "encoder.weight": _encoder(g, (D_SAE, D_IN)),
            "encoder.bias": _vector(g, D_SAE),
            "decoder.weight": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
        }
        bias_key = {
            "AutoEncoder": "bias",
            "GatedAutoEncoder": "decoder_bias",
            "AutoEncoderNew": "decoder.bias",
        }
        state[bias_key.get(dict_class, "b_dec")] = _vector(g, D_IN)
    if dict_class == "GatedAutoEncoder":
        del state["encoder.bias"]
        state |= {
            "gate_bias": _vector(g, D_SAE),
            "mag_bias": _vector(g, D_SAE),
            "r_mag": _vector(g, D_SAE, 0.3),
        }
    if dict_class == "JumpReluAutoEncoder":
        state["threshold"] = _thresholds(g)
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoderTopK"):
        state["k"] = torch.tensor(k, dtype=torch.int)
        state["threshold"] = torch.tensor(threshold)
    if dict_class == "MatryoshkaBatchTopKSAE":
        state["group_sizes"] = torch.tensor([8, 8, 16])
    return state


def write_dictionary_learning(
    root: Path,
    dict_class: str,
    layer: int = 15,
    seed: int = 6,
    threshold: float = 0.4,
    k: int = 5,
    trainer_extra: dict[str, Any] | None = None,
) -> Written:
    state = dictionary_learning_state(dict_class, seed, threshold, k)
    config = {
        "trainer": {
            "dict_class": dict_class,
            "trainer_class": "BatchTopKTrainer",
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": k,
            "layer": layer,
            "lm_name": "meta-llama/Llama-3.1-8B-Instruct",
            "submodule_name": f"resid_post_layer_{layer}",
            **(trainer_extra or {}),
        },
        "buffer": {"d_submodule": D_IN, "ctx_len": 1024},
    }
    path = root / "saes-llama-tiny" / f"resid_post_layer_{layer}" / "trainer_1"
    _write_json(path / "config.json", config)
    torch.save(state, path / "ae.pt")
    return Written(path, state, config)
