"""Save an SAE in SAELens format (v6 config), with this project's optional sidecar files.

The project's own SAEs are written this way so they load through the same loader as real ones.
A ``center`` SAE is written as SAELens writes one trained with TransformerLens'
``center_writing_weights``: it loads back as ``center`` when its ``model_name`` is a LayerNorm
model the loader knows (``formats.tl_preprocessing``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..sae import SAE, FeatureContext
from . import FEATURE_CONTEXTS_FILE, FEATURE_LABELS_FILE, FEATURE_STATS_FILE, saelens

ARCHITECTURES = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated"}


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder``: cfg.json, sae_weights.safetensors, and when known
    sparsity.safetensors, feature_stats.safetensors, feature_labels.json and
    feature_contexts.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {"hook_name": str(sae.hook), "model_name": sae.model_name}
    if sae.normalization == "center":
        metadata["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    cfg: dict[str, Any] = {
        "architecture": ARCHITECTURES[sae.activation],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none" if sae.normalization == "center" else sae.normalization,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if sae.activation == "topk":
        cfg |= {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag")
    tensors = {n: getattr(sae, n) for n in names if getattr(sae, n) is not None}
    if sae.activation == "gated":
        del tensors["b_enc"]  # SAELens gated SAEs have b_gate and b_mag instead
    save_file(_plain(tensors), folder / saelens.WEIGHTS_FILE)
    if sae.frequency is not None:
        log10 = torch.log10(sae.frequency.float() + 1e-10)  # SAELens stores log10 firing rates
        save_file({"sparsity": log10.contiguous()}, folder / saelens.SPARSITY_FILE)
    if sae.max_activation is not None:
        save_feature_stats(folder, sae.max_activation, sae.frequency, sae.mean_activation)
    if sae.labels:
        labels = {str(i): label for i, label in sorted(sae.labels.items())}
        (folder / FEATURE_LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n")
    if sae.contexts:
        save_feature_contexts(folder, sae.contexts)
    return folder


def save_feature_stats(
    folder: str | Path,
    max_activation: torch.Tensor,
    frequency: torch.Tensor | None = None,
    mean_activation: torch.Tensor | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``feature_stats.safetensors`` to ``folder``: ``max_activation`` and the optional
    ``frequency`` and ``mean_activation`` (each (d_sae,), float32), with ``metadata`` (strings)
    in the safetensors header. Returns the file's path."""
    path = Path(folder) / FEATURE_STATS_FILE
    stats = {"max_activation": max_activation, "frequency": frequency}
    stats["mean_activation"] = mean_activation
    save_file(_plain({k: v for k, v in stats.items() if v is not None}), path, metadata=metadata)
    return path


def save_feature_contexts(
    folder: str | Path, contexts: dict[int, tuple[FeatureContext, ...]], indent: int | None = 1
) -> Path:
    """Write ``feature_contexts.json`` to ``folder`` (the layout ``load_sae`` reads:
    ``{"index": [{left, token, right, activation}, ...]}``, best first; ``indent`` None writes
    it compact, for large SAEs). Returns its path."""
    path = Path(folder) / FEATURE_CONTEXTS_FILE
    table = {str(i): [dataclasses.asdict(c) for c in cs] for i, cs in sorted(contexts.items())}
    separators = (",", ":") if indent is None else None
    path.write_text(json.dumps(table, indent=indent, separators=separators) + "\n")
    return path


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
