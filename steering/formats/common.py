"""Helpers shared by the format loaders: safe file readers, key checks, hook and dtype parsing.

Every reader turns library exceptions into ``SAELoadError`` naming the file. Nothing here runs
code from a file: JSON only, ``safetensors``, ``np.load(allow_pickle=False)`` and
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import LayerUnknown, SAELoadError
from ..hookpoint import HookPoint
from ..models import DTYPES, resolve_dtype

RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre)$")
# the Hugging Face module whose output is the residual stream after decoder layer N
HF_LAYER_OUTPUT = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)\.output$")
# a Hub repo's folder in the Hugging Face cache: models--owner--name/snapshots/<commit>/...
HF_CACHE_REPO = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>.+)$")
RESIDUAL_ONLY = (
    "only residual-stream SAEs (hook_resid_post / hook_resid_pre, i.e. the output or input of "
    "a decoder layer) can steer"
)


@dataclass(frozen=True)
class LoadRequest:
    """What the caller asked for: the name they gave (for messages) and a layer override."""

    source: str
    layer: int | None = None


# ---- readers ----


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SAELoadError(f"{path} is not a readable JSON file: {e}") from e
    if not isinstance(data, dict):
        raise SAELoadError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise SAELoadError(f"{path} is missing")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise SAELoadError(f"{path} is not a valid safetensors file (truncated?): {e}") from e


def read_npz(path: Path) -> dict[str, Tensor]:
    try:
        # allow_pickle=False: an npz may hold pickled objects, which could run code
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SAELoadError(f"{path} is not a valid numeric .npz file: {e}") from e


def read_torch_weights(path: Path) -> dict[str, Any]:
    """A ``torch.save``d state dict, loaded with ``weights_only=True`` so no code can run."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        # the torch message suggests weights_only=False, which we never do: keep only its type
        raise SAELoadError(
            f"{path} is not a plain weights-only PyTorch state dict ({type(e).__name__}); "
            "it may be corrupt or contain code, so it is not loaded"
        ) from e
    if not isinstance(data, Mapping):
        raise SAELoadError(f"{path} should hold a state dict, found {type(data).__name__}")
    return dict(data)


# ---- config fields ----


def json_value(value: Any) -> str:
    """``value`` as it is written in a JSON config (``true``, ``"topk"``, ``{"k": 4}``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def field_error(source: str, field: str, value: Any, why: str) -> SAELoadError:
    """The error for a config field this project cannot honour: ``source: field=value: why``."""
    return SAELoadError(f"{source}: {field}={json_value(value)}: {why}")


def check_bool(value: Any, field: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise field_error(source, field, value, "should be true or false")
    return value


def check_dtype(value: Any, field: str, source: str) -> None:
    """A storage/compute dtype: only the precision the tensors were kept in, so any float dtype
    is accepted; anything else is refused (the loader would not know what the file holds)."""
    key = value.removeprefix("torch.") if isinstance(value, str) else None
    if key not in DTYPES:
        raise field_error(
            source, field, value, f"is not a float dtype; expected one of {', '.join(DTYPES)}"
        )


def check_optional_int(value: Any, field: str, source: str, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise field_error(source, field, value, "should be an integer")
    if value is not None and value < minimum:
        raise field_error(source, field, value, f"should be at least {minimum}")


def hub_repo_of(folder: Path, source: str, repos: Collection[str]) -> str | None:
    """Which of ``repos`` (``owner/name``) the SAE folder belongs to, if any: from a Hub reference
    ``owner/name/...``, a Hugging Face cache path ``models--owner--name/...`` or a local copy
    ``.../owner/name/...``."""
    parts = folder.resolve().parts
    for repo in repos:
        owner, name = repo.split("/")
        in_cache = any(
            (m := HF_CACHE_REPO.match(part)) and (m["owner"], m["name"]) == (owner, name)
            for part in parts
        )
        local_copy = any(parts[i : i + 2] == (owner, name) for i in range(len(parts) - 1))
        if in_cache or local_copy or source.removeprefix("hf://").startswith(repo + "/"):
            return repo
    return None


# ---- tensors ----


def require(tensors: Mapping[str, Any], key: str, file: Path | str) -> Tensor:
    """The tensor ``key``, as float32 on the CPU; names the keys present when it is missing."""
    value = tensors.get(key)
    if not isinstance(value, Tensor):
        present = ", ".join(sorted(k for k, v in tensors.items() if isinstance(v, Tensor)))
        problem = "is missing" if value is None else f"is a {type(value).__name__}, not a tensor"
        raise SAELoadError(f"{file}: tensor {key!r} {problem}; tensors present: {present}")
    return value.detach().to(torch.float32)


def optional(tensors: Mapping[str, Any], key: str, file: Path | str) -> Tensor | None:
    return require(tensors, key, file) if key in tensors else None


def first_present(tensors: Mapping[str, Any], keys: tuple[str, ...], file: Path) -> Tensor:
    for key in keys:
        if key in tensors:
            return require(tensors, key, file)
    return require(tensors, keys[0], file)  # raises, naming the preferred key


def matrix(tensor: Tensor, name: str, file: Path | str) -> Tensor:
    if tensor.ndim != 2:
        raise SAELoadError(f"{file}: {name} should be a matrix, found shape {tuple(tensor.shape)}")
    return tensor


def scalar(tensor: Tensor, name: str, file: Path | str) -> float:
    if tensor.numel() != 1:
        raise SAELoadError(f"{file}: {name} should be a scalar, found shape {tuple(tensor.shape)}")
    return float(tensor.reshape(()))


def row_norms(W_dec: Tensor) -> Tensor:
    """Norms of the decoder rows, with zeros replaced by one so dividing by them is safe."""
    norms = W_dec.norm(dim=-1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def check_dims(
    d_in: int, d_sae: int, config: Mapping[str, Any], keys: tuple[str, str], file: Path
) -> None:
    """The config's widths, where given, must agree with the tensors."""
    for key, actual in zip(keys, (d_in, d_sae), strict=True):
        stated = config.get(key)
        if isinstance(stated, int) and stated > 0 and stated != actual:
            raise SAELoadError(f"{file}: {key} is {stated} but the tensors have {actual}")


# ---- hooks and layers ----


def parse_resid_hook(hook_name: str, source: str) -> HookPoint:
    """``blocks.N.hook_resid_post`` / ``hook_resid_pre`` -> HookPoint; anything else is refused."""
    match = RESID_HOOK.match(hook_name.strip())
    if match is None:
        raise SAELoadError(f"{source} reads {hook_name!r}: {RESIDUAL_ONLY}")
    return HookPoint(int(match.group(1)), match.group(2))  # type: ignore[arg-type]


def resolve_hook(found: HookPoint | None, request: LoadRequest, what: str) -> HookPoint:
    """The files' hook point, or the ``layer=`` override; an error when neither says the layer.

    ``what`` says where the layer was looked for, for the error message.
    """
    layer = request.layer
    if layer is None:
        if found is None:
            raise LayerUnknown(
                f"{request.source}: cannot tell which layer this SAE reads ({what}); "
                "pass it with load_sae(..., layer=N)"
            )
        return found
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise SAELoadError(f"layer={layer!r} must be a non-negative integer")
    if found is not None and found.layer != layer:
        warnings.warn(
            f"{request.source}: the files say layer {found.layer}, using layer={layer} as asked",
            stacklevel=4,
        )
    return HookPoint(layer, found.site if found else "resid_post")


def search_layer(pattern: str, names: list[str]) -> int | None:
    """The first number captured by ``pattern`` in ``names`` (checked in order)."""
    for name in names:
        match = re.search(pattern, name)
        if match:
            return int(match.group(1))
    return None


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``torch.bfloat16``, ``"bfloat16"`` or ``"torch.bfloat16"``; float32 when None."""
    return resolve_dtype(dtype, error=SAELoadError) or torch.float32
