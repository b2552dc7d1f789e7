"""Llama Scope (OpenMOSS): ``hyperparams.json`` + ``checkpoints/final.safetensors``.

Definitions from OpenMOSS/Language-Model-SAEs at commit 4ec6f0aa ("Mega Update: Llama Scope
SAEs", 2024-10-26, the release that wrote these files), ``src/lm_saes/sae.py``. With
s_in = sqrt(d_model) / dataset_average_activation_norm.in and s_out likewise for ``out``
(``compute_norm_factor``; ``token-wise`` uses the token's own norm, ``inference`` 1)::

    x_n = x * s_in, minus decoder.bias if use_decoder_bias and apply_decoder_bias_to_pre_encoder
    pre = encoder(x_n)                          # normalised-space pre-activations
    x_hat = decoder(f) / s_out                  # decoder.bias only if use_decoder_bias

The JumpReLU threshold is the one ``SparseAutoEncoder.from_config`` (the inference loader) uses,
which is also the space ``post_process_topk_to_jumprelu_for_inference`` computed it in: the
weights are first standardised (``standardize_parameters_of_dataset_activation_scaling``:
encoder.bias / s_in, decoder.weight * s_in / s_out, decoder.bias / s_out), then, with
``sparsity_include_decoder_norm``, given unit decoder columns (``transform_to_unit_decoder_norm``:
encoder rows and bias times the column norm n'), and a feature fires where
``hidden > jump_relu_threshold`` (``hidden_pre.where(hidden_pre > t, 0)``). Here
hidden = pre * n' / s_in, with n' = n * s_in / s_out for n the stored decoder column norm, so
in normalised space the test is ``pre > t * s_out / n`` (``pre > t * s_in`` without the decoder
norm; s = 1 for token-wise and inference). SAELens 6.54.12 (``get_llama_scope_config_from_hf``)
uses ``t * s_in`` and ignores n; the two agree when the columns have unit norm.

We fold the constants into the weights (W_enc ×s_in; W_dec, b_dec ×1/s_out; the pre-encoder
bias into b_enc), so the SAE has no run-time normalisation for dataset-wise files and the
features keep their normalised-space units (SAELens' units). Every other hyperparameter is
honoured, refused or documented in docs/sae-config-fields.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SAELoadError
from ..sae import SAE, HookPoint, Normalization
from .common import (
    RESIDUAL_ONLY,
    LoadRequest,
    check_bool,
    check_dims,
    check_dtype,
    field_error,
    matrix,
    parse_resid_hook,
    read_json,
    read_safetensors,
    require,
    resolve_hook,
)

NAME = "llama_scope"
HYPERPARAMS_FILE = "hyperparams.json"
WEIGHTS_FILE = "checkpoints/final.safetensors"
FILES = f"{HYPERPARAMS_FILE} + {WEIGHTS_FILE}"
BASE_MODEL_PREFIX = "Llama3_1-8B-Base"  # folder names: Llama3_1-8B-Base-L15R-8x
# lm_saes versions disagree on these defaults (token-wise vs dataset-wise, True vs False), so
# a file must state them (released files do)
REQUIRED = ("norm_activation", "use_decoder_bias", "apply_decoder_bias_to_pre_encoder")
NORM_MODES = ("dataset-wise", "token-wise", "inference")


def matches(folder: Path) -> bool:
    return (folder / HYPERPARAMS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    """A Llama Scope SAE from ``hyperparams.json`` + ``checkpoints/final.safetensors``, with its
    dataset-wise norms folded into the weights (definitions in the module docstring); raises
    ``SAELoadError`` naming a field it cannot honour."""
    hp = read_json(folder / HYPERPARAMS_FILE)
    source = request.source
    _check_fields(hp, source)
    hook = resolve_hook(_hook(hp, source), request, f"no hook_point_in in {HYPERPARAMS_FILE}")
    file = folder / WEIGHTS_FILE
    tensors = read_safetensors(file)
    encoder = matrix(require(tensors, "encoder.weight", file), "encoder.weight", file)  # (n, d)
    decoder = matrix(require(tensors, "decoder.weight", file), "decoder.weight", file)  # (d, n)
    d_sae, d_in = encoder.shape
    check_dims(d_in, d_sae, hp, ("d_model", "d_sae"), file)
    use_decoder_bias = hp["use_decoder_bias"]
    decoder_bias = require(tensors, "decoder.bias", file) if use_decoder_bias else torch.zeros(d_in)
    encoder_bias = require(tensors, "encoder.bias", file)
    if use_decoder_bias and hp["apply_decoder_bias_to_pre_encoder"]:
        # (x_n - b) @ E.T + c == x_n @ E.T + (c - b @ E.T): exact whatever s_in and s_out are
        encoder_bias = encoder_bias - decoder_bias @ encoder.T
    s_in, s_out, normalization = _scales(hp, d_in, source)
    activation, threshold = _activation(hp, decoder, s_in, s_out, source)
    return SAE(
        W_enc=(encoder.T * s_in).contiguous(),
        b_enc=encoder_bias,
        W_dec=(decoder.T / s_out).contiguous(),
        b_dec=decoder_bias / s_out,
        hook=hook,
        activation=activation,  # type: ignore[arg-type]
        threshold=threshold,
        apply_b_dec_to_input=False,  # folded into b_enc above
        normalization=normalization,
        format=NAME,
        source=source,
        model_name=_model_name(hp, folder),
    )


def _check_fields(hp: dict[str, Any], source: str) -> None:
    for key in REQUIRED:
        if key not in hp:
            raise SAELoadError(
                f"{source}: {HYPERPARAMS_FILE} does not say {key}, and lm_saes versions default "
                "it differently, so what the SAE reads is unknown"
            )
    for key in ("use_decoder_bias", "apply_decoder_bias_to_pre_encoder"):
        check_bool(hp[key], key, source)
    for key in ("sparsity_include_decoder_norm", "use_glu_encoder"):
        if key in hp:
            check_bool(hp[key], key, source)
    if hp.get("use_glu_encoder"):
        raise field_error(
            source,
            "use_glu_encoder",
            True,
            "the encoder multiplies pre-activations by a sigmoid gate (encoder_glu), which this "
            "project does not implement",
        )
    if hp.get("dtype") is not None:
        check_dtype(hp["dtype"], "dtype", source)


def _hook(hp: dict[str, Any], source: str) -> HookPoint | None:
    hook_in = hp.get("hook_point_in")
    if not isinstance(hook_in, str):
        return None
    hook_out = hp.get("hook_point_out", hook_in)
    if hook_out != hook_in:
        raise SAELoadError(f"{source} reads {hook_in} and writes {hook_out}: {RESIDUAL_ONLY}")
    return parse_resid_hook(hook_in, source)


def _scales(hp: dict[str, Any], d_in: int, source: str) -> tuple[float, float, Normalization]:
    """(s_in, s_out, run-time normalisation) for the norm_activation mode."""
    mode = hp["norm_activation"]
    if mode == "dataset-wise":
        norms = hp.get("dataset_average_activation_norm")
        if not isinstance(norms, dict):
            raise field_error(
                source,
                "dataset_average_activation_norm",
                norms,
                "norm_activation is dataset-wise, so it must give the average norms {in, out}",
            )
        hook_in = hp.get("hook_point_in")
        avg_in = _average_norm(norms, "in", hook_in, source)
        avg_out = _average_norm(norms, "out", hp.get("hook_point_out", hook_in), source)
        if avg_in != avg_out and hp["use_decoder_bias"] and hp["apply_decoder_bias_to_pre_encoder"]:
            # training subtracts decoder.bias from x * s_in; the inference loader subtracts the
            # standardised decoder.bias / s_out from x: they differ unless s_in == s_out
            raise field_error(
                source,
                "apply_decoder_bias_to_pre_encoder",
                True,
                f"with unequal average norms in={avg_in} and out={avg_out}, lm_saes' training and "
                "inference definitions of the encoder input disagree",
            )
        return math.sqrt(d_in) / avg_in, math.sqrt(d_in) / avg_out, "none"
    if mode == "inference":  # the constants are already folded into the weights
        return 1.0, 1.0, "none"
    if mode == "token-wise":  # x * sqrt(d) / ||x||, undone on the output: constant_norm_rescale
        return 1.0, 1.0, "constant_norm_rescale"
    why = "depends on the other tokens of the batch" if mode == "batch-wise" else "is unknown"
    raise field_error(source, "norm_activation", mode, f"{why}; supported: {', '.join(NORM_MODES)}")


def _average_norm(norms: dict[str, Any], key: str, hook: Any, source: str) -> float:
    # released files key by "in"/"out"; newer lm_saes versions key by hook point name
    value = norms.get(key, norms.get(hook) if isinstance(hook, str) else None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise field_error(
            source,
            f"dataset_average_activation_norm.{key}",
            value,
            "should be a positive number",
        )
    return float(value)


def _activation(
    hp: dict[str, Any], decoder: Tensor, s_in: float, s_out: float, source: str
) -> tuple[str, Tensor | None]:
    """(activation, per-feature threshold in normalised space); see the module docstring."""
    act_fn = hp.get("act_fn", "relu")  # "relu" in every lm_saes version
    if not isinstance(act_fn, str):
        raise field_error(source, "act_fn", act_fn, "should be a string")
    act_fn = act_fn.lower()  # lm_saes compares act_fn.lower()
    value = hp.get("jump_relu_threshold", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise field_error(source, "jump_relu_threshold", value, "should be a number")
    if act_fn == "relu":
        return "relu", None  # lm_saes: clamp(pre, min=0)
    if act_fn == "topk" and value <= 0:
        raise field_error(
            source,
            "act_fn",
            act_fn,
            "a TopK SAE without a jump_relu_threshold ranks features by pre * decoder norm, "
            "which this project does not implement (from_config turns TopK with a positive "
            "threshold into JumpReLU)",
        )
    if act_fn not in ("jumprelu", "topk"):
        raise field_error(source, "act_fn", act_fn, "supported: relu, jumprelu, topk")
    if value < 0:
        raise field_error(
            source,
            "jump_relu_threshold",
            value,
            "lm_saes keeps negative pre-activations above a negative threshold; only "
            "thresholds >= 0 are supported",
        )
    if not hp.get("sparsity_include_decoder_norm", True):
        return "jumprelu", torch.full((decoder.shape[1],), float(value) * s_in)
    norms = decoder.norm(dim=0)
    # a zero column never fires (0 > t is false for t >= 0): an infinite threshold says the same
    return "jumprelu", torch.where(
        norms > 0, float(value) * s_out / norms, torch.full_like(norms, math.inf)
    )


def _model_name(hp: dict[str, Any], folder: Path) -> str | None:
    if isinstance(hp.get("model_name"), str):
        return hp["model_name"]
    return "meta-llama/Llama-3.1-8B" if folder.name.startswith(BASE_MODEL_PREFIX) else None
