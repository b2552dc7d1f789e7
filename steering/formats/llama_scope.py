"""Llama Scope (OpenMOSS): ``hyperparams.json`` + ``checkpoints/final.safetensors``.

Forward, as in OpenMOSS ``lm_saes`` ``SparseAutoEncoder.encode``/``decode`` (checked in its
source), with s_in = sqrt(d_model) / avg_norm_in and s_out = sqrt(d_model) / avg_norm_out for
``norm_activation: dataset-wise``::

    x_n = x * s_in, minus decoder.bias if apply_decoder_bias_to_pre_encoder
    pre = encoder(x_n)
    f = pre * (pre * n > jump_relu_threshold)   # n: decoder column norm if
                                                # sparsity_include_decoder_norm, else 1
    x_hat = decoder(f) / s_out

We fold the constants into the weights (W_enc ×s_in; W_dec, b_dec ×1/s_out; the pre-encoder
bias into b_enc), so the SAE has no run-time normalisation and the features keep their
normalised-space units.

Threshold choice (SAELens instead multiplies the scalar threshold by s_in): the threshold is
compared with pre-activations in the normalised space, exactly as lm_saes does. With
``sparsity_include_decoder_norm`` the test is ``pre * n_i > t``, i.e. ``pre > t / n_i``, with
n_i the norm of decoder column i as stored (normalised space): a per-feature threshold. For
t >= 0 (all released SAEs), ``pre * mask`` equals our ``relu(pre) * mask``.
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
    check_dims,
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


def matches(folder: Path) -> bool:
    return (folder / HYPERPARAMS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    # defaults below are lm_saes' config defaults; released files state every one of them
    hp = read_json(folder / HYPERPARAMS_FILE)
    found = _hook(hp, request.source)
    hook = resolve_hook(found, request, f"no hook_point_in in {HYPERPARAMS_FILE}")
    file = folder / WEIGHTS_FILE
    tensors = read_safetensors(file)
    encoder = matrix(require(tensors, "encoder.weight", file), "encoder.weight", file)  # (n, d)
    decoder = matrix(require(tensors, "decoder.weight", file), "decoder.weight", file)  # (d, n)
    d_sae, d_in = encoder.shape
    check_dims(d_in, d_sae, hp, ("d_model", "d_sae"), file)
    use_decoder_bias = hp.get("use_decoder_bias", True)
    decoder_bias = require(tensors, "decoder.bias", file) if use_decoder_bias else torch.zeros(d_in)
    encoder_bias = require(tensors, "encoder.bias", file)
    if use_decoder_bias and hp.get("apply_decoder_bias_to_pre_encoder", True):
        # (x_n - b) @ E.T + c == x_n @ E.T + (c - b @ E.T): exact whatever s_in and s_out are
        encoder_bias = encoder_bias - decoder_bias @ encoder.T
    s_in, s_out, normalization = _scales(hp, d_in, request.source)
    activation, threshold = _activation(hp, decoder, request.source)
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
        source=request.source,
        model_name=_model_name(hp, folder),
    )


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
    mode = hp.get("norm_activation", "token-wise")
    if mode == "dataset-wise":
        norms = hp.get("dataset_average_activation_norm")
        if not isinstance(norms, dict):
            raise SAELoadError(
                f"{source}: norm_activation is dataset-wise but {HYPERPARAMS_FILE} has no "
                "dataset_average_activation_norm {in, out}"
            )
        hook_in = hp.get("hook_point_in")
        avg_in = _average_norm(norms, "in", hook_in, source)
        avg_out = _average_norm(norms, "out", hp.get("hook_point_out", hook_in), source)
        return math.sqrt(d_in) / avg_in, math.sqrt(d_in) / avg_out, "none"
    if mode == "inference":  # the constants are already folded into the weights
        return 1.0, 1.0, "none"
    if mode == "token-wise":  # x * sqrt(d) / ||x||, undone on the output: constant_norm_rescale
        return 1.0, 1.0, "constant_norm_rescale"
    raise SAELoadError(f"{source}: norm_activation {mode!r} is not supported")


def _average_norm(norms: dict[str, Any], key: str, hook: Any, source: str) -> float:
    # released files key by "in"/"out"; newer lm_saes versions key by hook point name
    value = norms.get(key, norms.get(hook) if isinstance(hook, str) else None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SAELoadError(
            f"{source}: dataset_average_activation_norm[{key!r}] should be a positive number, "
            f"found {value!r}"
        )
    return float(value)


def _activation(hp: dict[str, Any], decoder: Tensor, source: str) -> tuple[str, Tensor | None]:
    act_fn = str(hp.get("act_fn", "relu")).lower()
    if act_fn == "relu":
        return "relu", None  # pre * n > 0 is pre > 0 for any positive norm
    if act_fn != "jumprelu":
        raise SAELoadError(f"{source}: Llama Scope act_fn {act_fn!r} is not supported")
    value = hp.get("jump_relu_threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SAELoadError(f"{source}: jump_relu_threshold should be a number, found {value!r}")
    threshold = torch.full((decoder.shape[1],), float(value))
    if hp.get("sparsity_include_decoder_norm", True):
        norms = decoder.norm(dim=0)
        # a zero column can never pass pre * 0 > t (t >= 0): an infinite threshold says the same
        threshold = torch.where(norms > 0, threshold / norms, torch.full_like(norms, math.inf))
    return "jumprelu", threshold


def _model_name(hp: dict[str, Any], folder: Path) -> str | None:
    if isinstance(hp.get("model_name"), str):
        return hp["model_name"]
    return "meta-llama/Llama-3.1-8B" if folder.name.startswith(BASE_MODEL_PREFIX) else None
