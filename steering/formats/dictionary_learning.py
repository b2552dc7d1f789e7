"""dictionary_learning (Marks et al.): ``ae.pt`` + ``config.json``, e.g. the folders
``resid_post_layer_15/trainer_1`` of andyrdt/saes-llama-3.1-8b-instruct.

Definitions checked in saprmarks/dictionary_learning (``dictionary.py``,
``trainers/top_k.py``, ``trainers/batch_top_k.py``, ``trainers/matryoshka_batch_top_k.py``):

* AutoEncoder: ``relu(encoder(x - bias))``, decode ``decoder(f) + bias``.
* AutoEncoderNew: ``relu(encoder(x))``, decode ``decoder(f)`` (the decoder has the bias).
* GatedAutoEncoder: ``x_enc = encoder(x - decoder_bias)`` (no encoder bias), gate
  ``x_enc + gate_bias > 0``, magnitude ``relu(exp(r_mag) * x_enc + mag_bias)``.
* JumpReluAutoEncoder: SAELens-style W_enc/b_enc/W_dec/b_dec/threshold, no input centring.
* AutoEncoderTopK: ``relu(encoder(x - b_dec))``, top k, decode ``decoder(f) + b_dec``.
* BatchTopKSAE, MatryoshkaBatchTopKSAE (the latter with W_enc/W_dec parameters): at inference
  ``encode`` uses the scalar ``threshold`` buffer: ``a = relu(pre); f = a * (a > threshold)``,
  which for threshold >= 0 is a JumpReLU with that threshold on every feature. Some versions
  scale Gated/JumpReLU features by decoder norms inside encode and undo it in decode; that only
  changes feature units, not reconstructions, and is not applied here.

Config fields (dictionary-learning 0.1.0 ``training.py``, ``buffer.py``, trainer ``config``):
``trainer.dict_class`` picks the forward pass above; ``activation_dim``/``dict_size`` and
``buffer.d_submodule`` must agree with the tensors; ``trainer.k`` must agree with the ``k``
buffer; ``buffer.io`` must be ``out`` (the module's output: ``in`` reads its input and
``in_and_out`` is a transcoder); ``trainer.norm_factor`` is recorded when training normalised
its inputs, and ``trainSAE`` rescales the biases by it before saving (``scale_biases``), so the
saved SAE reads raw activations and the field changes nothing here. Learning-rate, warm-up,
threshold-EMA and Matryoshka group fields only shape training. An uncalibrated BatchTopK
threshold (-1) is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SAELoadError
from ..sae import SAE, HookPoint
from .common import (
    RESIDUAL_ONLY,
    LoadRequest,
    check_dims,
    field_error,
    first_present,
    matrix,
    optional,
    read_json,
    read_torch_weights,
    require,
    resolve_hook,
    scalar,
)

NAME = "dictionary_learning"
WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
FILES = f"{WEIGHTS_FILE} + {CONFIG_FILE} (trainer.dict_class)"

BIAS_KEYS = ("b_dec", "bias", "decoder_bias", "decoder.bias")
CENTRED_INPUT = {  # dict_class -> whether encode subtracts the decoder bias first
    "AutoEncoder": True,
    "AutoEncoderNew": False,
    "GatedAutoEncoder": True,
    "JumpReluAutoEncoder": False,
    "AutoEncoderTopK": True,
    "TopKSAE": True,
    "BatchTopKSAE": True,
    "MatryoshkaBatchTopKSAE": True,
}
TOPK_CLASSES = ("AutoEncoderTopK", "TopKSAE")
BATCH_TOPK_CLASSES = ("BatchTopKSAE", "MatryoshkaBatchTopKSAE")
SITE_FOLDER = re.compile(r"^(?P<site>[a-z_]+?)_layer_(?P<layer>\d+)$")  # resid_post_layer_15


def matches(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    """An SAE from a dictionary_learning trainer folder (``ae.pt`` read with
    ``weights_only=True``, ``config.json``), converted to SAELens orientation as the module
    docstring says; raises ``SAELoadError`` naming the file, class or field it cannot honour."""
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise SAELoadError(
            f"{folder} has {WEIGHTS_FILE} but no {CONFIG_FILE}: dictionary_learning SAEs need "
            "the trainer config (trainer.dict_class) to be read correctly"
        )
    config = read_json(config_file)
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        raise SAELoadError(f"{config_file} has no 'trainer' object")
    _check_buffer(config.get("buffer"), trainer, request.source)
    dict_class = trainer.get("dict_class")
    if dict_class not in CENTRED_INPUT:
        raise SAELoadError(
            f"{request.source}: dict_class {dict_class!r} is not supported; supported: "
            f"{', '.join(CENTRED_INPUT)}"
        )
    hook = resolve_hook(
        _hook(trainer, folder, request.source),
        request,
        f"no trainer.layer in {CONFIG_FILE} and no resid_post_layer_N folder",
    )
    file = folder / WEIGHTS_FILE
    state = read_torch_weights(file)
    weights = _weights(state, file, gated=dict_class == "GatedAutoEncoder")
    d_in, d_sae = weights["W_enc"].shape
    check_dims(d_in, d_sae, trainer, ("activation_dim", "dict_size"), file)
    return SAE(
        **weights,
        **_activation(dict_class, state, trainer, d_sae, file, request.source),
        hook=hook,
        apply_b_dec_to_input=CENTRED_INPUT[dict_class],
        format=NAME,
        source=request.source,
        model_name=trainer.get("lm_name") if isinstance(trainer.get("lm_name"), str) else None,
    )


def _check_buffer(buffer: Any, trainer: dict[str, Any], source: str) -> None:
    """The activation buffer's config: which side of the module the activations came from."""
    if buffer is None:
        return
    if not isinstance(buffer, dict):
        raise field_error(source, "buffer", buffer, "should be an object")
    io = buffer.get("io", "out")
    if io != "out":
        why = (
            f"this is a transcoder: {RESIDUAL_ONLY}"
            if io == "in_and_out"
            else "the SAE read the module's input, which the folder names cannot place; only "
            "output activations (io=out) are supported"
        )
        raise field_error(source, "buffer.io", io, why)
    d_submodule, d_in = buffer.get("d_submodule"), trainer.get("activation_dim")
    if d_submodule is not None and d_in is not None and d_submodule != d_in:
        raise field_error(
            source, "buffer.d_submodule", d_submodule, f"disagrees with activation_dim={d_in}"
        )


def _hook(trainer: dict[str, Any], folder: Path, source: str) -> HookPoint | None:
    submodule = trainer.get("submodule_name")
    if isinstance(submodule, str) and re.search(r"mlp|attn|attention", submodule):
        raise SAELoadError(f"{source} was trained on {submodule!r}: {RESIDUAL_ONLY}")
    site_folder = SITE_FOLDER.match(folder.parent.name) or SITE_FOLDER.match(folder.name)
    site = site_folder["site"] if site_folder else "resid_post"
    if site not in ("resid_post", "resid_pre"):
        raise SAELoadError(f"{source} lives under {site_folder.string}/: {RESIDUAL_ONLY}")
    layer = trainer.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        layer = int(site_folder["layer"]) if site_folder else None
    return HookPoint(layer, site) if layer is not None else None  # type: ignore[arg-type]


def _weights(state: dict[str, Any], file: Path, gated: bool) -> dict[str, Tensor]:
    """W_enc, b_enc, W_dec, b_dec (+ gated tensors) in our orientation, from either layout."""
    if "W_enc" in state:  # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE: nn.Parameter layout
        W_enc = matrix(require(state, "W_enc", file), "W_enc", file)
        W_dec = matrix(require(state, "W_dec", file), "W_dec", file)
        b_enc = require(state, "b_enc", file)
    else:  # nn.Linear layout: encoder.weight (d_sae, d_in), decoder.weight (d_in, d_sae)
        W_enc = matrix(require(state, "encoder.weight", file), "encoder.weight", file).T
        W_dec = matrix(require(state, "decoder.weight", file), "decoder.weight", file).T
        b_enc = optional(state, "encoder.bias", file)
        if b_enc is None:
            b_enc = torch.zeros(W_enc.shape[1]) if gated else require(state, "encoder.bias", file)
    weights = {
        "W_enc": W_enc.contiguous(),
        "b_enc": b_enc,
        "W_dec": W_dec.contiguous(),
        "b_dec": first_present(state, BIAS_KEYS, file),
    }
    if gated:
        weights |= {
            "b_gate": require(state, "gate_bias", file),
            "r_mag": require(state, "r_mag", file),
            "b_mag": require(state, "mag_bias", file),
        }
    return weights


def _activation(
    dict_class: str,
    state: dict[str, Any],
    trainer: dict[str, Any],
    d_sae: int,
    file: Path,
    source: str,
) -> dict[str, Any]:
    if dict_class == "GatedAutoEncoder":
        return {"activation": "gated"}
    if dict_class == "JumpReluAutoEncoder":
        return {"activation": "jumprelu", "threshold": require(state, "threshold", file)}
    if dict_class in TOPK_CLASSES:
        return {"activation": "topk", "k": _k(state, trainer, file, source)}
    if dict_class in BATCH_TOPK_CLASSES:
        _k(state, trainer, file, source)  # checks that the buffer and the config agree
        threshold = scalar(require(state, "threshold", file), "threshold", file)
        if threshold < 0:
            # -1 means never calibrated: the library's encode would keep every positive
            # pre-activation, a dense code the SAE was never trained to produce
            raise field_error(
                source,
                "threshold",
                threshold,
                "the BatchTopK threshold was never calibrated (training stopped before "
                "threshold_start_step), so the SAE has no inference definition",
            )
        return {"activation": "jumprelu", "threshold": torch.full((d_sae,), threshold)}
    return {"activation": "relu"}


def _k(state: dict[str, Any], trainer: dict[str, Any], file: Path, source: str) -> int:
    stated = trainer.get("k")
    if isinstance(state.get("k"), Tensor):
        k = int(scalar(state["k"], "k", file))
        if stated is not None and stated != k:
            raise field_error(source, "trainer.k", stated, f"but {file.name} has k={k}")
        return k
    if isinstance(stated, bool) or not isinstance(stated, int):
        raise SAELoadError(
            f"{file}: a TopK SAE needs k (a 'k' tensor or trainer.k), found {stated!r}"
        )
    return stated
