"""Gemma Scope (Gemma 2, ``params.npz``) and Gemma Scope 2 (Gemma 3, ``params.safetensors``).

Both store JumpReLU SAEs in our orientation (W_enc (d_in, d_sae), W_dec (d_sae, d_in)); the
input is not shifted by b_dec. Gemma Scope 1 has no config: the hub layout
``<repo>-res/layer_K/width_W/average_l0_L`` says the site (the repo kind) and the layer (output
of decoder layer K). Gemma Scope 2 may have a ``config.json`` whose ``hf_hook_point_in`` names
the HF module (``model.layers.17.output``); without it the folder
``resid_post[_all]/layer_17_width_16k_l0_medium`` says the same.

Gemma Scope 2 ``config.json`` fields (as SAELens 6.54.12 ``get_gemma_3_config_from_hf`` reads
them): ``architecture`` must be ``jump_relu``; ``type`` must be ``sae`` and ``affine_connection``
false (transcoders, CLTs and crosscoders are refused); ``hf_hook_point_in``/``_out`` must be a
decoder layer's output; ``width`` must equal the tensors' d_sae; ``l0`` (the training sparsity
target) and ``model_name`` describe the SAE and change nothing. Gemma Scope 1 has no config.

Neuronpedia id (``SAE.neuronpedia_id``, where Neuronpedia keeps the SAE's labels): Neuronpedia
hosts one SAE per Gemma Scope 1 residual layer and width, the "canonical" L0, as
``<model>/<layer>-gemmascope-res-<width>`` (``gemma-2-2b/20-gemmascope-res-16k`` is
``google/gemma-scope-2b-pt-res`` ``layer_20/width_16k/average_l0_71``). Which L0 is canonical is
not in the layout, so ``CANONICAL_L0`` lists it, copied from SAELens 6.54.12
``sae_lens/pretrained_saes.yaml`` (the ``gemma-scope-*-res-canonical`` releases, whose every
entry has that ``neuronpedia`` id). Any other L0, and Gemma Scope 2, get no id: SAELens' table of
the other L0s has entries that contradict it, so deriving them would not be certain.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import SAELoadError
from ..sae import SAE, HookPoint
from .common import (
    HF_LAYER_OUTPUT,
    RESIDUAL_ONLY,
    LoadRequest,
    check_bool,
    check_dims,
    check_optional_int,
    field_error,
    matrix,
    read_json,
    read_npz,
    read_safetensors,
    require,
    resolve_hook,
    search_layer,
)

NAME = "gemma_scope"
NAME_2 = "gemma_scope_2"
PARAMS_FILE = "params.npz"
PARAMS_FILE_2 = "params.safetensors"
CONFIG_FILE_2 = "config.json"
FILES = f"{PARAMS_FILE} (in layer_K/width_W/average_l0_L)"
FILES_2 = f"{PARAMS_FILE_2} (+ {CONFIG_FILE_2})"

# a path part naming a non-residual kind: gemma-scope-2b-pt-mlp, ...-att, transcoders, embedding
NON_RESIDUAL_PART = re.compile(
    r"(?:^|[-_.])(mlp|att|attn|transcoders?|embedding|clt|crosscoder)(?:$|[-_.])", re.IGNORECASE
)
RESIDUAL_PART = re.compile(r"(?:^|[-_.])res(?:id)?(?:$|[-_.])", re.IGNORECASE)
RESIDUAL_SITES_2 = ("resid_post", "resid_post_all")
GS1_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-")
# models--google--<repo>/snapshots/<commit>/layer_K/width_W/average_l0_L
PATH_DEPTH = 6
GS1_RES_REPO = re.compile(r"gemma-scope-(\d+b-(?:pt|it))-res$")
# (repo's "<size>-<pt|it>", width) -> {layer: canonical L0}; see the module docstring
CANONICAL_L0: dict[tuple[str, str], dict[int, int]] = {
    ("2b-pt", "16k"): dict(
        enumerate(
            [105, 102, 141, 59, 124, 68, 70, 69, 71, 73, 77, 80, 82, 84, 84, 78, 78, 77, 74, 73]
            + [71, 70, 72, 75, 73, 116]
        )
    ),
    ("2b-pt", "32k"): {12: 76},
    ("2b-pt", "65k"): dict(
        enumerate(
            [73, 121, 77, 89, 89, 105, 107, 107, 111, 118, 128, 70, 72, 75, 73, 127, 128, 125]
            + [116, 115, 114, 111, 116, 123, 124, 93]
        )
    ),
    ("2b-pt", "262k"): {12: 121},
    ("2b-pt", "524k"): {12: 115},
    ("2b-pt", "1m"): {5: 114, 12: 107, 19: 88},
    ("9b-pt", "16k"): dict(
        enumerate(
            [129, 69, 67, 90, 91, 77, 93, 92, 99, 100, 113, 118, 130, 132, 67, 131, 75, 73, 71]
            + [132, 68, 129, 123, 120, 114, 114, 116, 118, 119, 119, 120, 114, 111, 114, 114]
            + [120, 120, 124, 128, 131, 125, 113]
        )
    ),
    ("9b-pt", "32k"): {20: 57},
    ("9b-pt", "65k"): {20: 55},
    ("9b-pt", "131k"): dict(
        enumerate(
            [41, 56, 70, 103, 101, 94, 120, 119, 72, 75, 84, 88, 96, 99, 105, 103, 121, 117, 113]
            + [110, 114, 109, 105, 101, 97, 96, 97, 96, 98, 97, 95, 92, 88, 91, 89, 94, 93, 96]
            + [101, 99, 94, 84]
        )
    ),
    ("9b-pt", "524k"): {20: 48},
    ("9b-pt", "1m"): {9: 122, 20: 101, 31: 77},
    ("9b-it", "16k"): {9: 88, 20: 91, 31: 76},
    ("9b-it", "131k"): {9: 121, 20: 81, 31: 109},
    ("27b-pt", "131k"): {10: 106, 22: 82, 34: 72},
}


def matches(folder: Path) -> bool:
    return (folder / PARAMS_FILE).is_file()


def matches_2(folder: Path) -> bool:
    return (folder / PARAMS_FILE_2).is_file()


def load(folder: Path, request: LoadRequest) -> SAE:
    parts = _path_parts(folder)
    _refuse_non_residual_path(parts, request.source)
    layer = search_layer(r"^layer_(\d+)$", parts[::-1])
    found = HookPoint(layer, "resid_post") if layer is not None else None
    hook = resolve_hook(found, request, "no layer_K folder in the path")
    tensors = _uppercase_w(read_npz(folder / PARAMS_FILE))
    sae = _jumprelu_sae(tensors, folder / PARAMS_FILE, hook, request, NAME, _gemma_2_name(parts))
    return replace(sae, neuronpedia_id=neuronpedia_id(parts))


def neuronpedia_id(parts: list[str]) -> str | None:
    """Neuronpedia's id of the Gemma Scope 1 residual SAE whose path ends with ``parts``
    (``.../gemma-scope-2b-pt-res/.../layer_20/width_16k/average_l0_71`` ->
    ``gemma-2-2b/20-gemmascope-res-16k``), or None where it is not certain (module docstring)."""
    if len(parts) < 4:
        return None
    layer, width, l0 = (
        re.fullmatch(pattern, part)
        for pattern, part in zip(
            (r"layer_(\d+)", r"width_(\w+)", r"average_l0_(\d+)"), parts[-3:], strict=True
        )
    )
    repo = next((m for m in map(GS1_RES_REPO.search, parts[:-3]) if m), None)
    if layer is None or width is None or l0 is None or repo is None:
        return None
    canonical = CANONICAL_L0.get((repo.group(1), width.group(1)), {})
    if canonical.get(int(layer.group(1))) != int(l0.group(1)):
        return None
    model = "gemma-2-" + repo.group(1).removesuffix("-pt")
    return f"{model}/{layer.group(1)}-gemmascope-res-{width.group(1)}"


def load_2(folder: Path, request: LoadRequest) -> SAE:
    """A Gemma Scope 2 JumpReLU SAE from ``params.safetensors`` (+ ``config.json``), layer and
    site from the config or the folder name; raises ``SAELoadError`` naming a refused field."""
    config_file = folder / CONFIG_FILE_2
    config = read_json(config_file) if config_file.is_file() else {}
    found = _hook_from_config(config, config_file, request.source)
    if found is None:
        found = _hook_from_folder(folder, request.source)
    hook = resolve_hook(found, request, "no config.json and no layer_K_width_... folder name")
    weights_file = folder / PARAMS_FILE_2
    tensors = _uppercase_w(read_safetensors(weights_file))
    if "affine_skip_connection" in tensors:
        raise SAELoadError(f"{request.source} is an affine skip transcoder: {RESIDUAL_ONLY}")
    model_name = config.get("model_name") if isinstance(config.get("model_name"), str) else None
    sae = _jumprelu_sae(tensors, weights_file, hook, request, NAME_2, model_name)
    check_dims(sae.d_in, sae.d_sae, {"width": config.get("width")}, ("d_in", "width"), config_file)
    return sae


def _jumprelu_sae(
    tensors: dict[str, Tensor],
    file: Path,
    hook: HookPoint,
    request: LoadRequest,
    name: str,
    model_name: str | None,
) -> SAE:
    return SAE(
        W_enc=matrix(require(tensors, "W_enc", file), "W_enc", file),
        b_enc=require(tensors, "b_enc", file),
        W_dec=matrix(require(tensors, "W_dec", file), "W_dec", file),
        b_dec=require(tensors, "b_dec", file),
        hook=hook,
        activation="jumprelu",
        threshold=require(tensors, "threshold", file),
        apply_b_dec_to_input=False,
        format=name,
        source=request.source,
        model_name=model_name,
    )


def _uppercase_w(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gemma Scope 2 (and some npz files) spell the matrices w_enc / w_dec."""
    return {("W_" + k[2:] if k.startswith("w_") else k): value for k, value in tensors.items()}


def _path_parts(folder: Path) -> list[str]:
    """The folder's last names, up to the repo's (a Hub snapshot adds snapshots/<commit>).

    Higher folders belong to the user's disk layout and say nothing about the SAE.
    """
    return list(folder.resolve().parts[-PATH_DEPTH:])


def _refuse_non_residual_path(parts: list[str], source: str) -> None:
    for part in parts:
        match = NON_RESIDUAL_PART.search(part)
        if match:
            raise SAELoadError(
                f"{source}: the path part {part!r} marks a non-residual SAE "
                f"({match.group(1)}): {RESIDUAL_ONLY}"
            )
    if not any(RESIDUAL_PART.search(part) for part in parts):
        warnings.warn(
            f"{source}: the path does not name a residual Gemma Scope repo (...-res); assuming the "
            "SAE reads the residual stream after layer K",
            stacklevel=4,
        )


def _gemma_2_name(parts: list[str]) -> str | None:
    """google/gemma-scope-2b-pt-res -> google/gemma-2-2b; ...-9b-it-res -> google/gemma-2-9b-it."""
    for part in parts:
        match = GS1_REPO.search(part)
        if match:
            size, kind = match.groups()
            return f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
    return None


def _hook_from_config(config: dict[str, Any], file: Path, source: str) -> HookPoint | None:
    kind = config.get("type", "sae")
    if kind != "sae":
        raise field_error(source, "type", kind, f"{file.name} describes a {kind}: {RESIDUAL_ONLY}")
    if check_bool(config.get("affine_connection", False), "affine_connection", source):
        raise field_error(
            source,
            "affine_connection",
            True,
            f"an affine skip connection (a transcoder's): {RESIDUAL_ONLY}",
        )
    architecture = config.get("architecture", "jump_relu")
    if architecture not in ("jump_relu", "jumprelu"):
        raise field_error(source, "architecture", architecture, "Gemma Scope 2 SAEs are jump_relu")
    check_optional_int(config.get("width"), "width", source)
    hook_in, hook_out = config.get("hf_hook_point_in"), config.get("hf_hook_point_out")
    if not isinstance(hook_in, str):
        return None
    match = HF_LAYER_OUTPUT.match(hook_in)
    if match is None or (isinstance(hook_out, str) and hook_out != hook_in):
        raise SAELoadError(f"{source} reads {hook_in!r} and writes {hook_out!r}: {RESIDUAL_ONLY}")
    return HookPoint(int(match.group(1)), "resid_post")


def _hook_from_folder(folder: Path, source: str) -> HookPoint | None:
    site = folder.parent.name
    if site not in RESIDUAL_SITES_2:
        if NON_RESIDUAL_PART.search(site) or site.startswith(("mlp_", "attn_")):
            raise SAELoadError(f"{source} lives under {site}/: {RESIDUAL_ONLY}")
        warnings.warn(
            f"{source}: not under resid_post/ and no {CONFIG_FILE_2}; assuming the SAE reads the "
            "residual stream after layer K",
            stacklevel=4,
        )
    layer = search_layer(r"^layer_(\d+)_width_", [folder.name])
    return HookPoint(layer, "resid_post") if layer is not None else None
