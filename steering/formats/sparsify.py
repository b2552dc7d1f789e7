"""EleutherAI sparsify (formerly ``sae``): ``layers.N/cfg.json`` + ``layers.N/sae.safetensors``.

Forward (sparsify ``SparseCoder.encode``/``decode``): ``relu(encoder(x - b_dec))``, keep the top
k, decode ``top_acts @ W_dec[top_idx] + b_dec``. ``encoder.weight`` is (d_sae, d_in); ``W_dec`` is
(d_sae, d_in) with row i latent i's direction, used as stored (SAELens' converter transposes it,
which contradicts sparsify's own decode). The folder name is the hooked module relative to the
model's base: ``layers.N`` is the output of decoder layer N.

Config fields (eai-sparsify 1.3.3 ``sparsify/config.py`` ``SparseCoderConfig``, and ``signed``
of the older ``sae`` package): ``k`` and ``activation: topk`` are honoured; ``normalize_decoder``
and ``multi_topk`` only shape training (the unit-norm constraint during optimisation, an extra
loss term: ``SparseCoder.forward``) and are accepted; ``skip_connection``, ``transcode``,
``signed`` and ``activation: groupmax`` change the forward pass and are refused when on; ``d_in``,
``num_latents`` and ``expansion_factor`` must agree with the tensors. Fields sparsify does not
define are reported in a warning (sparsify itself drops them:
``from_dict(drop_extra_fields=True)``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ..errors import SAELoadError
from ..sae import SAE, HookPoint
from .common import (
    RESIDUAL_ONLY,
    LoadRequest,
    check_bool,
    check_dims,
    field_error,
    matrix,
    read_json,
    read_safetensors,
    require,
    resolve_hook,
)

NAME = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FILES = f"{CFG_FILE} + {WEIGHTS_FILE} (in a layers.N folder)"
TRAINING_CONFIG_FILE = "config.json"  # one level up, written by the trainer

LAYER_OUTPUT = re.compile(r"^(?:.*\.)?(?:layers|h)[._](\d+)$")  # layers.N, h.N (GPT-2)
SEED_FOLDER = re.compile(r"^seed\d+$")  # several seeds: layers.N/seedK
TRAINING_ONLY = ("normalize_decoder", "multi_topk")
REFUSED_WHEN_ON = {
    "signed": "the old sae package's signed SAEs pick the top k by |value| without a ReLU",
    "transcode": "this is a transcoder (it reads a module's input, predicts its output): {}",
    "skip_connection": "the decoder adds a linear skip term x @ W_skip.T: {}",
}
KNOWN_FIELDS = {"d_in", "activation", "expansion_factor", "num_latents", "k", *TRAINING_ONLY}
KNOWN_FIELDS |= set(REFUSED_WHEN_ON)


def matches(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    """A TopK SAE from a sparsify ``layers.N`` folder (``cfg.json`` + ``sae.safetensors``);
    raises ``SAELoadError`` naming a field it cannot honour."""
    cfg = read_json(folder / CFG_FILE)
    _refuse_unsupported(cfg, request.source)
    module = _module_name(folder)
    hook = resolve_hook(_hook(module, request.source), request, f"folder name {module!r}")
    weights_file = folder / WEIGHTS_FILE
    tensors = read_safetensors(weights_file)
    if "W_skip" in tensors:
        raise SAELoadError(f"{request.source} has a skip connection (W_skip): {RESIDUAL_ONLY}")
    encoder = matrix(
        require(tensors, "encoder.weight", weights_file), "encoder.weight", weights_file
    )
    d_sae, d_in = encoder.shape
    stated = {"d_in": cfg.get("d_in"), "num_latents": _stated_width(cfg)}
    check_dims(d_in, d_sae, stated, ("d_in", "num_latents"), weights_file)
    return SAE(
        W_enc=encoder.T.contiguous(),
        b_enc=require(tensors, "encoder.bias", weights_file),
        W_dec=matrix(require(tensors, "W_dec", weights_file), "W_dec", weights_file),
        b_dec=require(tensors, "b_dec", weights_file),
        hook=hook,
        activation="topk",
        k=_k(cfg, folder / CFG_FILE),
        apply_b_dec_to_input=True,  # sparsify always centres autoencoder inputs on b_dec
        format=NAME,
        source=request.source,
        model_name=_model_name(folder),
    )


def _refuse_unsupported(cfg: dict[str, Any], source: str) -> None:
    for key in TRAINING_ONLY:
        if key in cfg:
            check_bool(cfg[key], key, source)
    for key, why in REFUSED_WHEN_ON.items():
        if key in cfg and check_bool(cfg[key], key, source):
            raise field_error(source, key, True, why.format(RESIDUAL_ONLY))
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        why = "keeps the largest latent of each of k groups" if activation == "groupmax" else ""
        raise field_error(
            source, "activation", activation, f"{why}; only topk is supported".lstrip("; ")
        )
    unknown = sorted(set(cfg) - KNOWN_FIELDS)
    if unknown:
        warnings.warn(
            f"{source}: {', '.join(unknown)} in cfg.json are not sparsify SparseCoderConfig "
            "fields; sparsify ignores them and so does this loader",
            stacklevel=4,
        )


def _module_name(folder: Path) -> str:
    return folder.parent.name if SEED_FOLDER.match(folder.name) else folder.name


def _hook(module: str, source: str) -> HookPoint | None:
    match = LAYER_OUTPUT.match(module)
    if match:
        return HookPoint(int(match.group(1)), "resid_post")
    if module == "embed_tokens" or re.search(r"(?:layers|h)[._]\d+\.", module):
        raise SAELoadError(
            f"{source} reads {module!r}, not the output of a decoder layer: {RESIDUAL_ONLY}"
        )
    return None  # a renamed folder: the layer= override may say it


def _stated_width(cfg: dict[str, Any]) -> int:
    """num_latents, or d_in * expansion_factor when num_latents is 0 or missing (0 if unknown)."""
    num_latents = cfg.get("num_latents")
    if isinstance(num_latents, int) and num_latents > 0:
        return num_latents
    d_in, expansion = cfg.get("d_in"), cfg.get("expansion_factor")
    if isinstance(d_in, int) and isinstance(expansion, int):
        return d_in * expansion
    return 0


def _k(cfg: dict[str, Any], file: Path) -> int:
    k = cfg.get("k")
    if isinstance(k, bool) or not isinstance(k, int):
        raise SAELoadError(f"{file}: k should be an integer, found {k!r}")
    return k  # SAE checks 0 < k <= d_sae


def _model_name(folder: Path) -> str | None:
    """The trainer's config.json beside the hookpoint folders names the model, when present."""
    for parent in (folder.parent, folder.parent.parent):
        path = parent / TRAINING_CONFIG_FILE
        if path.is_file():
            try:
                model = read_json(path).get("model")
            except SAELoadError:
                return None  # optional metadata: a bad file there must not block the SAE
            return model if isinstance(model, str) else None
    return None
