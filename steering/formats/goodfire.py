"""Goodfire SAEs: one ``torch.save``d state dict, e.g. ``Llama-3.1-8B-Instruct-SAE-l19.pth``.

Forward (Goodfire's README module): ``f = relu(encoder_linear(x))``, ``x_hat = decoder_linear(f)``;
no input centring. ``encoder_linear.weight`` is (d_sae, d_in) and ``decoder_linear.weight`` is
(d_in, d_sae), so feature i's direction is column i of the decoder. The layer is in the file name
(``-l19``: the output of decoder layer 19).

There is no config file, so no field to honour: the module has exactly these four tensors, and
a file with others (a threshold, a scale, ...) would mean something else, so it is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SAELoadError
from ..sae import SAE, HookPoint
from .common import LoadRequest, matrix, read_torch_weights, require, resolve_hook, search_layer

NAME = "goodfire"
SUFFIXES = (".pth", ".pt")
FILES = "one .pth/.pt file with encoder_linear.* and decoder_linear.*"
KEYS = (
    "encoder_linear.weight",
    "encoder_linear.bias",
    "decoder_linear.weight",
    "decoder_linear.bias",
)
MODEL_FROM_STEM = re.compile(r"^(Llama-[\w.-]+?)-SAE-l\d+$")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)


def matches(folder: Path) -> bool:
    return len(weight_files(folder)) == 1


def load(path: Path, request: LoadRequest) -> SAE:
    """``path`` is the weights file, or a folder holding exactly one."""
    file = path if path.is_file() else _single_file(path)
    tensors = read_torch_weights(file)
    if not any(key in tensors for key in KEYS):
        present = ", ".join(sorted(map(str, tensors))[:20])
        raise SAELoadError(
            f"{file} is not a known SAE state dict: expected Goodfire keys {', '.join(KEYS)} "
            f"(or an ae.pt from dictionary_learning); keys present: {present}"
        )
    extra = sorted(str(k) for k in tensors if k not in KEYS)
    if extra:
        raise SAELoadError(
            f"{file}: a Goodfire SAE holds only {', '.join(KEYS)}; the extra entries "
            f"{', '.join(extra)} would change its forward pass, so it is not loaded"
        )
    layer = search_layer(r"-l(\d+)$", [file.stem, file.parent.name])
    found = HookPoint(layer, "resid_post") if layer is not None else None
    hook = resolve_hook(found, request, f"no -lN in the file name {file.name!r}")
    encoder = matrix(require(tensors, KEYS[0], file), KEYS[0], file)
    decoder = matrix(require(tensors, KEYS[2], file), KEYS[2], file)
    return SAE(
        W_enc=encoder.T.contiguous(),
        b_enc=require(tensors, KEYS[1], file),
        W_dec=decoder.T.contiguous(),
        b_dec=require(tensors, KEYS[3], file),
        hook=hook,
        activation="relu",
        apply_b_dec_to_input=False,
        format=NAME,
        source=request.source,
        model_name=_model_name(file.stem),
    )


def _single_file(folder: Path) -> Path:
    files = weight_files(folder)
    if len(files) != 1:
        names = ", ".join(p.name for p in files) or "none"
        raise SAELoadError(f"{folder} should hold one .pth/.pt file, found: {names}")
    return files[0]


def _model_name(stem: str) -> str | None:
    """Llama-3.1-8B-Instruct-SAE-l19 -> meta-llama/Llama-3.1-8B-Instruct."""
    match = MODEL_FROM_STEM.match(stem)
    return f"meta-llama/{match.group(1)}" if match else None
