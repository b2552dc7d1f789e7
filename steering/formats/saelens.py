"""SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Reads v6 configs (flat architecture fields, LLM fields under ``metadata``) and the older flat
spellings (``hook_name``/``hook_layer``, ``hook_point``/``hook_point_layer``,
``activation_fn_str`` + ``activation_fn_kwargs``), as SAELens' ``handle_pre_6_0_config`` does.
Tensors are already in our orientation: W_enc (d_in, d_sae), W_dec (d_sae, d_in).

Every config field that changes what the SAE reads or writes is honoured or refused with an
error naming it (definitions from sae-lens 6.54.12 ``saes/*.py`` and 5.11.0 ``sae.py``; the table
is docs/sae-config-fields.md). Training bookkeeping fields (learning rates, wandb names, ...)
are ignored, as SAELens itself drops them (``filter_valid_dataclass_fields``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SAELoadError
from ..sae import SAE, HookPoint, Normalization
from . import tl_preprocessing
from .common import (
    HF_LAYER_OUTPUT,
    RESIDUAL_ONLY,
    LoadRequest,
    check_bool,
    check_dims,
    check_dtype,
    check_optional_int,
    field_error,
    hub_repo_of,
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
SCALER_FILE = "activation_scaler.json"  # SAELens trainer checkpoints: {"scaling_factor": s}
FILES = f"{CFG_FILE} + {WEIGHTS_FILE}"

ACTIVATIONS = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated"}
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
RUN_TIME_NORMALIZATIONS: dict[str, Normalization] = {
    "none": "none",
    "layer_norm": "layer_norm",
    "constant_norm_rescale": "constant_norm_rescale",
}
SCALED_INPUT = "expected_average_only_in"
SCALING_FACTOR_KEYS = ("scaling_factor", "finetuning_scaling_factor")

# What SAELens' release registry adds to the files of native SAELens releases, where it changes
# the maths (sae-lens 6.54.12 pretrained_saes.yaml: config_overrides, norm_scaling_factor).
REGISTRY_OVERRIDES: dict[str, dict[str, Any]] = {
    # gpt2-small-res-jb and gpt2-small-res-jb-feature-splitting: trained with TransformerLens'
    # default processing, which centres GPT-2's writing weights
    "jbloom/GPT2-Small-SAEs-Reformatted": {
        "model_from_pretrained_kwargs": {"center_writing_weights": True}
    },
    "jbloom/GPT2-Small-Feature-Splitting-Experiment-Layer-8": {
        "model_from_pretrained_kwargs": {"center_writing_weights": True}
    },
    "JoshEngels/Mistral-7B-Residual-Stream-SAEs": {  # mistral-7b-res-wg
        "normalize_activations": "constant_norm_rescale"
    },
}
REGISTRY_SCALING_FACTORS: dict[tuple[str, str], float] = {  # gemma-2b-res-jb
    ("jbloom/Gemma-2b-Residual-Stream-SAEs", "gemma_2b_blocks.12.hook_resid_post_16384"): (
        0.21381938399317255
    ),
}
REGISTRY_REPOS = {*REGISTRY_OVERRIDES, *(repo for repo, _ in REGISTRY_SCALING_FACTORS)}


def matches(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    """An SAE from a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, optional
    ``sparsity.safetensors`` of log10 firing rates); raises ``SAELoadError`` naming a field it
    cannot honour (docs/sae-config-fields.md)."""
    source = request.source
    repo = hub_repo_of(folder, source, REGISTRY_REPOS)
    fields = _fields(read_json(folder / CFG_FILE), repo, source)
    _check_training_context(fields, source)
    architecture = _architecture(fields, source)
    hook = resolve_hook(_hook(fields, source), request, f"no hook_name in {CFG_FILE}")
    normalization, input_scale = _normalization(fields, folder, repo, source)
    if tl_preprocessing.centres_input(fields, source):
        normalization = _with_centring(normalization, fields, source)
    weights_file = folder / WEIGHTS_FILE
    tensors = read_safetensors(weights_file)

    W_enc = matrix(require(tensors, "W_enc", weights_file), "W_enc", weights_file)
    W_dec = matrix(require(tensors, "W_dec", weights_file), "W_dec", weights_file)
    W_dec = _apply_scaling_factor(W_dec, tensors, fields, weights_file, source)
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
        k=_k(fields, source) if architecture == "topk" else None,
        apply_b_dec_to_input=_flag(fields, "apply_b_dec_to_input", True, source),
        normalization=normalization,
        **_gated_tensors(tensors, weights_file, architecture),
        frequency=_frequency(folder / SPARSITY_FILE),
        format=NAME,
        source=source,
        model_name=fields.get("model_name") if isinstance(fields.get("model_name"), str) else None,
        neuronpedia_id=_neuronpedia_id(fields),
    )
    if input_scale is not None:
        sae = _fold_input_scale(sae, input_scale)
    if _rescales_by_decoder_norm(fields, architecture, source):
        sae = _fold_decoder_norm(sae)
    return sae


def _fields(cfg: dict[str, Any], repo: str | None, source: str) -> dict[str, Any]:
    """Config fields with v6 ``metadata`` merged in and the release registry's overrides on top
    (SAELens applies them with ``cfg_dict.update(cfg_overrides)``)."""
    metadata = cfg.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise field_error(source, "metadata", metadata, "should be an object")
    return {**cfg, **metadata, **REGISTRY_OVERRIDES.get(repo or "", {})}


def _neuronpedia_id(fields: dict[str, Any]) -> str | None:
    """SAELens' ``neuronpedia_id`` ("MODEL_ID/SOURCE_ID"; v6 keeps it in ``metadata``), when it
    has that shape: it names where Neuronpedia keeps this SAE's labels."""
    value = fields.get("neuronpedia_id")
    if isinstance(value, str) and value.count("/") == 1 and all(value.split("/")):
        return value.strip()
    return None


def _flag(fields: dict[str, Any], key: str, default: bool, source: str) -> bool:
    value = fields.get(key)
    return default if value is None else check_bool(value, key, source)


def _check_training_context(fields: dict[str, Any], source: str) -> None:
    """Fields that describe only what the SAE was trained on: accepted when well-formed.

    ``prepend_bos``, ``context_size``, ``seqpos_slice`` and ``exclude_special_tokens`` say which
    token positions the training activations came from; the SAE is the same function at every
    position, so they change nothing here. ``dtype`` is the precision it was kept in (this
    project computes in the dtype ``load_sae`` is asked for). ``device`` is where it was saved.
    """
    if fields.get("dtype") is not None:
        check_dtype(fields["dtype"], "dtype", source)
    if fields.get("prepend_bos") is not None:
        check_bool(fields["prepend_bos"], "prepend_bos", source)
    check_optional_int(fields.get("context_size"), "context_size", source)
    special = fields.get("exclude_special_tokens")
    token_ids = isinstance(special, list) and all(isinstance(t, int) for t in special)
    if special is not None and not isinstance(special, bool) and not token_ids:
        raise field_error(
            source, "exclude_special_tokens", special, "should be true, false or token ids"
        )
    seqpos = fields.get("seqpos_slice")
    if seqpos is not None and not (
        isinstance(seqpos, list)
        and len(seqpos) <= 3
        and all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in seqpos)
    ):
        raise field_error(source, "seqpos_slice", seqpos, "should be a [start, stop, step] list")


def _architecture(fields: dict[str, Any], source: str) -> str:
    architecture = fields.get("architecture")
    activation_fn = fields.get("activation_fn", fields.get("activation_fn_str"))
    if architecture in TRANSCODERS or "d_out" in fields or fields.get("hook_name_out"):
        raise SAELoadError(f"{source} is a transcoder ({architecture}): {RESIDUAL_ONLY}")
    # pre-6 configs say TopK through the activation function of a "standard" SAE
    if architecture in (None, "standard") and activation_fn == "topk":
        architecture = "topk"
    architecture = architecture or "standard"
    if architecture not in ACTIVATIONS:
        raise field_error(
            source,
            "architecture",
            architecture,
            f"is not supported; supported: {', '.join(ACTIVATIONS)}",
        )
    _check_activation_fn(activation_fn, fields.get("activation_fn_kwargs"), architecture, source)
    return architecture


def _check_activation_fn(value: Any, kwargs: Any, architecture: str, source: str) -> None:
    """SAELens 5 applies ``activation_fn_str`` in every architecture (``get_activation_fn``):
    ``relu``, ``topk`` (with ``k`` in ``activation_fn_kwargs``) or ``tanh-relu``."""
    expected = "topk" if architecture == "topk" else "relu"
    if value is not None and value != expected:
        why = (
            "SAELens 5 applies tanh(relu(pre)), which this project does not implement"
            if value == "tanh-relu"
            else f"a {architecture} SAE needs {expected!r} here"
        )
        raise field_error(source, "activation_fn", value, why)
    allowed = {"k"} if architecture == "topk" else set()
    if kwargs is not None and (not isinstance(kwargs, dict) or set(kwargs) - allowed):
        raise field_error(
            source,
            "activation_fn_kwargs",
            kwargs,
            f"only {sorted(allowed) or 'no arguments'} can be honoured for {expected}",
        )


def _hook(fields: dict[str, Any], source: str) -> HookPoint | None:
    reshape = fields.get("reshape_activations", "none")
    if reshape == "hook_z":
        raise SAELoadError(f"{source} reads attention heads (hook_z): {RESIDUAL_ONLY}")
    if reshape not in ("none", None):
        raise field_error(source, "reshape_activations", reshape, "should be none or hook_z")
    for key in ("hook_head_index", "hook_point_head_index"):
        if fields.get(key) is not None:
            raise field_error(
                source, key, fields[key], f"this SAE reads one attention head: {RESIDUAL_ONLY}"
            )
    hook_name = fields.get("hook_name") or fields.get("hook_point")
    if not isinstance(hook_name, str):
        return None
    hook = parse_resid_hook(hook_name, source)
    for key in ("hook_layer", "hook_point_layer"):
        layer = fields.get(key)
        if layer is not None and layer != hook.layer:
            raise field_error(
                source, key, layer, f"disagrees with hook_name {hook_name!r} (layer {hook.layer})"
            )
    hf_hook = fields.get("hf_hook_name")
    match = HF_LAYER_OUTPUT.match(hf_hook) if isinstance(hf_hook, str) else None
    if hf_hook is not None and (
        match is None or (int(match.group(1)), "resid_post") != (hook.layer, hook.site)
    ):
        raise field_error(
            source, "hf_hook_name", hf_hook, f"is not the module whose output is {hook_name}"
        )
    return hook


def _k(fields: dict[str, Any], source: str) -> int:
    kwargs = fields.get("activation_fn_kwargs")
    from_kwargs = kwargs.get("k") if isinstance(kwargs, dict) else None
    k = fields.get("k", from_kwargs)
    if from_kwargs is not None and k != from_kwargs:
        raise field_error(source, "k", k, f"disagrees with activation_fn_kwargs.k={from_kwargs}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise field_error(source, "k", k, "a TopK SAE needs an integer k")
    return k


def _threshold(tensors: dict[str, Tensor], file: Path) -> Tensor:
    if "threshold" not in tensors and "log_threshold" in tensors:
        return require(tensors, "log_threshold", file).exp()  # training checkpoints
    return require(tensors, "threshold", file)


def _gated_tensors(tensors: dict[str, Tensor], file: Path, architecture: str) -> dict[str, Tensor]:
    if architecture != "gated":
        return {}
    return {key: require(tensors, key, file) for key in ("b_gate", "r_mag", "b_mag")}


def _normalization(
    fields: dict[str, Any], folder: Path, repo: str | None, source: str
) -> tuple[Normalization, float | None]:
    """The run-time normalisation and the constant input scale to fold, if any.

    SAELens 6.54.12 ``SAEConfig.__post_init__`` / ``_setup_activation_normalization``: ``none``,
    ``layer_norm``, ``constant_norm_rescale`` run per token; ``expected_average_only_in``
    multiplies inputs by a constant ``s`` kept outside the weights (the trainer's
    ``activation_scaler.json``, or the release registry's ``norm_scaling_factor``);
    ``covariance_whitening`` whitens with statistics kept outside the weights. Pre-6 booleans:
    true means ``expected_average_only_in``.
    """
    value = fields.get("normalize_activations")
    value = {None: "none", False: "none", True: SCALED_INPUT}.get(value, value)  # type: ignore[arg-type]
    scaler = _scaler_file_factor(folder, source)
    if value == SCALED_INPUT:
        return "none", _input_scale(scaler, folder, repo, source)
    if scaler is not None:
        raise field_error(
            source,
            "normalize_activations",
            value,
            f"but {SCALER_FILE} holds a scaling factor ({scaler}), which SAELens applies only "
            f"with {SCALED_INPUT}; the files disagree on what the SAE reads",
        )
    if value in RUN_TIME_NORMALIZATIONS:
        return RUN_TIME_NORMALIZATIONS[value], None
    if value == "covariance_whitening":
        raise field_error(
            source,
            "normalize_activations",
            value,
            "this SAE reads whitened activations (x - mean) @ M, with statistics the trainer "
            "folds into the weights only at the end of training; these weights are unfolded",
        )
    raise field_error(
        source,
        "normalize_activations",
        value,
        f"is not a SAELens normalisation; supported: {', '.join(RUN_TIME_NORMALIZATIONS)}, "
        f"{SCALED_INPUT}",
    )


def _scaler_file_factor(folder: Path, source: str) -> float | None:
    path = folder / SCALER_FILE
    if not path.is_file():
        return None
    value = read_json(path).get("scaling_factor")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise field_error(source, f"{SCALER_FILE} scaling_factor", value, "should be positive")
    if not math.isfinite(value):
        raise field_error(source, f"{SCALER_FILE} scaling_factor", value, "should be finite")
    return float(value)


def _input_scale(scaler: float | None, folder: Path, repo: str | None, source: str) -> float:
    if scaler is not None:
        return scaler
    registry = REGISTRY_SCALING_FACTORS.get((repo or "", folder.name))
    if registry is not None:
        return registry
    raise field_error(
        source,
        "normalize_activations",
        SCALED_INPUT,
        "this SAE was trained on inputs multiplied by a constant (sqrt(d_in) / mean input norm) "
        "that its files do not carry (SAELens keeps it in its release registry as "
        "norm_scaling_factor); without it every pre-activation, threshold and steering write "
        f"would be off by that factor. Write it beside {CFG_FILE} as {SCALER_FILE} "
        '{"scaling_factor": S} (the file SAELens\' trainer writes) to load this SAE',
    )


def _fold_input_scale(sae: SAE, s: float) -> SAE:
    """An SAE of ``s * x`` as an SAE of ``x``: SAELens ``fold_activation_norm_scaling_factor``
    (W_enc *= s, W_dec /= s, b_dec /= s); features keep the units the SAE was trained in."""
    return replace(sae, W_enc=sae.W_enc * s, W_dec=sae.W_dec / s, b_dec=sae.b_dec / s)


def _with_centring(
    normalization: Normalization, fields: dict[str, Any], source: str
) -> Normalization:
    """The run-time normalisation of an SAE that reads the residual minus its per-token mean."""
    if normalization == "none":
        return "center"
    if normalization == "layer_norm":  # it removes the mean itself: centring first is a no-op
        return "layer_norm"
    raise field_error(
        source,
        "normalize_activations",
        fields.get("normalize_activations"),
        "combined with center_writing_weights (per-token centring before the per-token norm "
        "rescale) is not implemented",
    )


def _apply_scaling_factor(
    W_dec: Tensor, tensors: dict[str, Tensor], fields: dict[str, Any], file: Path, source: str
) -> Tensor:
    """SAELens 5 ``finetuning_scaling_factor``: decode multiplies the activations by a stored
    per-feature factor (``apply_finetuning_scaling_factor``); folded into W_dec here.

    As SAELens' ``read_sae_components_from_disk``: all-ones factors (saved by some versions for
    every SAE) are dropped; other factors need ``finetuning_scaling_factor: true``.
    """
    enabled = _flag(fields, "finetuning_scaling_factor", False, source)
    for key in SCALING_FACTOR_KEYS:
        factor = optional(tensors, key, file)
        if factor is None or torch.allclose(factor, torch.ones_like(factor)):
            continue
        if not enabled:
            raise field_error(
                source,
                "finetuning_scaling_factor",
                fields.get("finetuning_scaling_factor", False),
                f"but {file.name} holds a {key} that is not all ones (SAELens refuses this too)",
            )
        if factor.shape != W_dec.shape[:1]:
            raise SAELoadError(
                f"{file}: {key} has shape {tuple(factor.shape)}, expected ({W_dec.shape[0]},)"
            )
        W_dec = W_dec * factor[:, None]
    return W_dec


def _rescales_by_decoder_norm(fields: dict[str, Any], architecture: str, source: str) -> bool:
    rescale = _flag(fields, "rescale_acts_by_decoder_norm", False, source)
    if rescale and architecture != "topk":
        raise field_error(
            source,
            "rescale_acts_by_decoder_norm",
            True,
            f"SAELens defines it for TopK SAEs only; a {architecture} SAE with it is not a "
            "configuration SAELens can load",
        )
    return rescale


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
