"""TransformerLens weight processing recorded in SAELens configs, and what it does to the input.

SAELens collects training activations from
``HookedTransformer.from_pretrained_no_processing(model_name, **model_from_pretrained_kwargs)``
(sae-lens 6.54.12 and 5.11.0 ``load_model.py``), so ``model_from_pretrained_kwargs`` says which
of TransformerLens' weight processings were switched on; its default is
``{"center_writing_weights": False}`` (sae-lens 6.54.12 ``config.py``). What each one does to the
residual stream (transformer-lens 4.3.0 ``weight_processing.py``, ``ProcessWeights``):

* ``center_writing_weights``: subtracts its mean over d_model from every weight and bias that
  writes to the residual stream (W_E, W_pos, W_O, b_O, W_out, b_out). Every write then has zero
  mean, so the TransformerLens residual is the Hugging Face residual minus its per-token mean
  (derived: the residual is the sum of those writes). ``process_weights`` applies it only to
  LayerNorm models (``normalization_type`` LN/LNPre, no ``final_rms``): for RMSNorm models it is
  skipped and the flag means nothing. Honoured as the ``center`` normalisation.
* ``fold_ln``, ``fold_value_biases``, ``center_unembed``, ``refactor_factored_attn_matrices``:
  move LayerNorm scales and value biases into the weights that read the residual, or re-factor
  attention matrices; every hook point's value is unchanged, so they change nothing here.
* device, dtype and hook-toggle arguments: where and in what precision the model ran.

Any other argument (a different model checkpoint, ...) is refused: it may change the activations.
Only ``HookedTransformer`` models are known (``model_class_name``): SAEs of ``HookedMamba`` or
of ``AutoModelForCausalLM`` (whose hook names are module paths) are refused.
"""

from __future__ import annotations

import re
from typing import Any

from .common import check_bool, field_error

KWARGS_FIELD = "model_from_pretrained_kwargs"
CENTER = "center_writing_weights"
# processings that leave every hook point's value unchanged (ProcessWeights docstrings)
NO_RESIDUAL_EFFECT = ("fold_ln", "fold_value_biases", "center_unembed")
# refactor_factored_attn_matrices keeps W_Q W_K^T and W_V W_O, so attention outputs are unchanged
NO_RESIDUAL_EFFECT += ("refactor_factored_attn_matrices",)
RUN_CONTEXT = (  # placement, precision, tokenizer defaults and which extra hooks exist
    "device",
    "n_devices",
    "move_to_device",
    "dtype",
    "torch_dtype",
    "default_prepend_bos",
    "default_padding_side",
    "first_n_layers",
    "n_ctx",
    "use_attn_result",
    "use_split_qkv_input",
    "use_hook_mlp_in",
    "use_attn_in",
    "trust_remote_code",
)
KNOWN_ARGUMENTS = (CENTER, *NO_RESIDUAL_EFFECT, *RUN_CONTEXT)
# TransformerLens model families by normalisation (transformer-lens loading_from_pretrained
# configs): pre-LayerNorm models get centred writing weights; RMSNorm models never do
LAYER_NORM_MODELS = re.compile(
    r"(?:^|/)(?:gpt2|distilgpt2|stanford-gpt2|pythia|gpt-neo|gpt-j|tiny-?stories|gelu-\d+l|"
    r"solu-\d+l|attn-only)",
    re.IGNORECASE,
)
RMS_NORM_MODELS = re.compile(r"(?:^|/)(?:gemma|llama|meta-llama|mistral|mixtral|qwen)", re.I)
MODEL_CLASS = "model_class_name"
KNOWN_MODEL_CLASS = "HookedTransformer"


def centres_input(fields: dict[str, Any], source: str) -> bool:
    """Whether the SAE reads the residual stream with its per-token mean removed.

    ``fields`` are the SAELens config fields (metadata merged in). Raises ``SAELoadError`` naming
    the field for a model class, a processing argument or a model this module cannot account for.
    """
    model_class = fields.get(MODEL_CLASS)
    if model_class is not None and model_class != KNOWN_MODEL_CLASS:
        raise field_error(
            source,
            MODEL_CLASS,
            model_class,
            f"only {KNOWN_MODEL_CLASS} activations (TransformerLens hook names) are understood; "
            "an SAE of another model class reads activations this project cannot map to a "
            "decoder layer",
        )
    kwargs = fields.get(KWARGS_FIELD)
    if kwargs is None:
        return False
    if not isinstance(kwargs, dict):
        raise field_error(source, KWARGS_FIELD, kwargs, "should be an object of keyword arguments")
    for key, value in kwargs.items():
        _check_argument(key, value, source)
    if not kwargs.get(CENTER, False):
        return False
    return _centred_model(fields.get("model_name"), source)


def _check_argument(key: str, value: Any, source: str) -> None:
    field = f"{KWARGS_FIELD}.{key}"
    if key == CENTER or key in NO_RESIDUAL_EFFECT:
        check_bool(value, field, source)
    elif key not in RUN_CONTEXT:
        raise field_error(
            source,
            field,
            value,
            "is a TransformerLens loading argument this project does not know; it may change "
            "the activations the SAE was trained on (e.g. another checkpoint of the model), so "
            f"the SAE is not loaded. Known: {', '.join(KNOWN_ARGUMENTS)}",
        )


def _centred_model(model_name: Any, source: str) -> bool:
    name = model_name if isinstance(model_name, str) else ""
    if LAYER_NORM_MODELS.search(name):
        return True
    if RMS_NORM_MODELS.search(name):
        return False  # TransformerLens skips centring for RMSNorm models
    raise field_error(
        source,
        f"{KWARGS_FIELD}.{CENTER}",
        True,
        f"TransformerLens centres the writing weights of LayerNorm models only, so this SAE "
        f"reads the residual minus its per-token mean if model_name={model_name!r} uses "
        "LayerNorm and the raw residual if it uses RMSNorm; that model is not one this project "
        "knows the normalisation of, so the SAE is not loaded (known LayerNorm families: GPT-2, "
        "Pythia, GPT-Neo(X), GPT-J, TinyStories; RMSNorm: Gemma, Llama, Mistral, Qwen)",
    )
