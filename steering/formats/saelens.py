"""SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Reads v6 configs (flat architecture fields, LLM fields under ``metadata``) and the older flat
spellings (``hook_name``/``hook_layer``, ``hook_point``/``hook_point_layer``,
``activation_fn_str`` + ``activation_fn_kwargs``), as SAELens' ``handle_pre_6_0_config`` does.
Tensors are already in our orientation: W_enc (d_in, d_sae), W_dec (d_sae, d_in).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
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
    optional,
    parse_resid_hook,
    read_json,
    read_safetensors,
    require,
    resolve_hook,
    row_norms,
)

NAME = "saelens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"  # key "sparsity": log10 of each feature's firing rate
FILES = f"{CFG_FILE} + {WEIGHTS_FILE}"

ACTIVATIONS = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated"}
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
NORMALIZATIONS: dict[str, Normalization] = {
    "none": "none",
    "layer_norm": "layer_norm",
    "constant_norm_rescale": "constant_norm_rescale",
}
SCALING_FACTOR_KEYS = ("scaling_factor", "finetuning_scaling_factor")


def matches(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    cfg = read_json(folder / CFG_FILE)
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    fields = {**cfg, **metadata}  # v6 nests the LLM fields (hook_name, model_name) in metadata
    weights_file = folder / WEIGHTS_FILE
    architecture = _architecture(fields, request.source)
    hook = resolve_hook(_hook(fields, request.source), request, f"no hook_name in {CFG_FILE}")
    tensors = read_safetensors(weights_file)

    W_enc = matrix(require(tensors, "W_enc", weights_file), "W_enc", weights_file)
    W_dec = matrix(require(tensors, "W_dec", weights_file), "W_dec", weights_file)
    W_dec = _apply_scaling_factor(W_dec, tensors, weights_file)
    d_in, d_sae = W_enc.shape
    check_dims(d_in, d_sae, fields, ("d_in", "d_sae"), weights_file)
    b_enc = optional(tensors, "b_enc", weights_file)
    if b_enc is None and architecture != "gated":
        b_enc = require(tensors, "b_enc", weights_file)  # raises, listing the keys present
    sae = SAE(
        W_enc=W_enc,
        b_enc=b_enc if b_enc is not None else torch.zeros(d_sae),  # gated SAEs have no b_enc
        W_dec=W_dec,
        b_dec=require(tensors, "b_dec", weights_file),
        hook=hook,
        activation=ACTIVATIONS[architecture],  # type: ignore[arg-type]
        threshold=_threshold(tensors, weights_file) if architecture == "jumprelu" else None,
        k=_k(fields, weights_file) if architecture == "topk" else None,
        apply_b_dec_to_input=bool(fields.get("apply_b_dec_to_input", True)),
        normalization=_normalization(fields.get("normalize_activations"), request.source),
        **_gated_tensors(tensors, weights_file, architecture),
        frequency=_frequency(folder / SPARSITY_FILE),
        format=NAME,
        source=request.source,
        model_name=fields.get("model_name") if isinstance(fields.get("model_name"), str) else None,
    )
    if architecture == "topk" and fields.get("rescale_acts_by_decoder_norm"):
        sae = _fold_decoder_norm(sae)
    return sae


def _architecture(fields: dict[str, Any], source: str) -> str:
    architecture = fields.get("architecture")
    activation_fn = fields.get("activation_fn", fields.get("activation_fn_str"))
    # pre-6 configs say TopK through the activation function of a "standard" SAE
    if architecture in (None, "standard") and activation_fn == "topk":
        return "topk"
    architecture = architecture or "standard"
    if architecture in TRANSCODERS or "d_out" in fields or fields.get("hook_name_out"):
        raise SAELoadError(f"{source} is a transcoder ({architecture}): {RESIDUAL_ONLY}")
    if architecture not in ACTIVATIONS:
        raise SAELoadError(
            f"{source}: SAELens architecture {architecture!r} is not supported; "
            f"supported: {', '.join(ACTIVATIONS)}"
        )
    return architecture


def _hook(fields: dict[str, Any], source: str) -> HookPoint | None:
    hook_name = fields.get("hook_name") or fields.get("hook_point")
    if fields.get("reshape_activations") == "hook_z":
        raise SAELoadError(f"{source} reads attention heads (hook_z): {RESIDUAL_ONLY}")
    if not isinstance(hook_name, str):
        return None
    return parse_resid_hook(hook_name, source)


def _k(fields: dict[str, Any], file: Path) -> int:
    kwargs = fields.get("activation_fn_kwargs")
    k = fields.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if isinstance(k, bool) or not isinstance(k, int):
        raise SAELoadError(f"{file.parent / CFG_FILE}: a TopK SAE needs an integer k, found {k!r}")
    return k


def _threshold(tensors: dict[str, Tensor], file: Path) -> Tensor:
    if "threshold" not in tensors and "log_threshold" in tensors:
        return require(tensors, "log_threshold", file).exp()  # training checkpoints
    return require(tensors, "threshold", file)


def _gated_tensors(tensors: dict[str, Tensor], file: Path, architecture: str) -> dict[str, Tensor]:
    if architecture != "gated":
        return {}
    return {key: require(tensors, key, file) for key in ("b_gate", "r_mag", "b_mag")}


def _normalization(value: Any, source: str) -> Normalization:
    if value is None or value is False:
        return "none"
    if value is True:  # pre-6 configs
        value = "expected_average_only_in"
    if value == "expected_average_only_in":
        warnings.warn(
            f"{source}: normalize_activations is expected_average_only_in but the files carry no "
            "scaling factor (SAELens keeps it in its release registry); encoding uses unscaled "
            "inputs, so feature activations may be off by a constant factor. Steering along "
            "decoder directions is unaffected.",
            stacklevel=4,
        )
        return "none"
    if value not in NORMALIZATIONS:
        raise SAELoadError(
            f"{source}: normalize_activations {value!r} is not supported; supported: "
            f"{', '.join(NORMALIZATIONS)}, expected_average_only_in"
        )
    return NORMALIZATIONS[value]


def _apply_scaling_factor(W_dec: Tensor, tensors: dict[str, Tensor], file: Path) -> Tensor:
    """Legacy per-feature factors multiply the activations before decoding: fold them into W_dec.

    All-ones factors (saved by some SAELens versions for every SAE) change nothing.
    """
    for key in SCALING_FACTOR_KEYS:
        factor = optional(tensors, key, file)
        if factor is not None and not torch.allclose(factor, torch.ones_like(factor)):
            if factor.shape != W_dec.shape[:1]:
                raise SAELoadError(
                    f"{file}: {key} has shape {tuple(factor.shape)}, expected ({W_dec.shape[0]},)"
                )
            W_dec = W_dec * factor[:, None]
    return W_dec


def _fold_decoder_norm(sae: SAE) -> SAE:
    """TopK with rescale_acts_by_decoder_norm ranks pre * ||W_dec row|| and decodes acts / norm.

    Scaling W_enc's columns and b_enc by the norm and W_dec's rows by its inverse is the same
    function (SAELens' ``_fold_norm_topk``), so the plain TopK encode applies.
    """
    norms = row_norms(sae.W_dec)
    return replace(
        sae, W_enc=sae.W_enc * norms, b_enc=sae.b_enc * norms, W_dec=sae.W_dec / norms[:, None]
    )


def _frequency(path: Path) -> Tensor | None:
    if not path.exists():
        return None
    return 10.0 ** require(read_safetensors(path), "sparsity", path)
