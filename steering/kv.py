"""Batch surgery on transformers' DynamicCache, for continuous batching.

Rows are right-aligned (left padding): a row that joins a running batch is prefilled on its own,
then both caches are left-padded to one length and concatenated; finished rows are selected away
and columns that are padding in every row are trimmed. The engine builds its caches as
``DynamicCache()`` (full ``DynamicLayer``s), whose ``keys``/``values`` are (B, H, T, D) tensors.
``DynamicCache.layers`` exists from transformers 4.54; the declared range is in pyproject.toml.
"""

from __future__ import annotations

import copy
import functools
import inspect

import torch
from torch import Tensor, nn
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def cache_kwargs(model: nn.Module, cache: DynamicCache) -> dict[str, DynamicCache]:
    """The keyword argument that hands ``cache`` to ``model``'s forward.

    ``{"cache": cache}`` where the forward declares ``cache`` (transformers 5.24 renamed it and
    deprecated ``past_key_values``, to be removed in 5.40), else ``{"past_key_values": cache}``
    (earlier releases, and remote-code models that still declare the old name). The name is
    read from the signature, never guessed from the version: a forward with ``**kwargs`` would
    swallow a name it does not know, and run without the cache.
    """
    return {_cache_keyword(type(model)): cache}


@functools.cache
def _cache_keyword(model_class: type[nn.Module]) -> str:
    params = inspect.signature(model_class.forward).parameters  # follows @wraps decorators
    return "cache" if "cache" in params else "past_key_values"


def merge(
    a: DynamicCache, mask_a: Tensor, b: DynamicCache, mask_b: Tensor
) -> tuple[DynamicCache, Tensor]:
    """Rows of ``a`` then rows of ``b`` in one cache, left-padded to the longer; masks (B, T)."""
    target = max(mask_a.shape[1], mask_b.shape[1])
    for la, lb in zip(a.layers, b.layers):
        la.keys = torch.cat([_pad_left(la.keys, target), _pad_left(lb.keys, target)])
        la.values = torch.cat([_pad_left(la.values, target), _pad_left(lb.values, target)])
    mask = torch.cat([_pad_left_2d(mask_a, target), _pad_left_2d(mask_b, target)])
    return a, mask


def select(cache: DynamicCache, mask: Tensor, rows: Tensor) -> tuple[DynamicCache, Tensor]:
    """Keep ``rows`` (indices), then drop leading columns that are padding in every kept row."""
    mask = mask[rows]
    drop = int((mask.cumsum(-1) == 0).all(0).sum()) if mask.numel() else 0
    for layer in cache.layers:
        layer.keys = layer.keys[rows, :, drop:]
        layer.values = layer.values[rows, :, drop:]
    return cache, mask[:, drop:]


def _pad_left(t: Tensor, target: int) -> Tensor:  # (B, H, T, D) -> (B, H, target, D)
    missing = target - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3])
    return torch.cat([pad, t], dim=2)


def _pad_left_2d(mask: Tensor, target: int) -> Tensor:  # (B, T) -> (B, target)
    missing = target - mask.shape[1]
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1) if missing else mask


def take(cache: DynamicCache, mask: Tensor, rows: Tensor) -> tuple[DynamicCache, Tensor]:
    """A new cache holding ``rows`` of ``cache`` (which is left as it is), and their mask."""
    taken = copy.copy(cache)
    taken.layers = [copy.copy(layer) for layer in cache.layers]
    return select(taken, mask, rows)


def crop(cache: DynamicCache, length: int) -> None:
    """Drop every position past ``length``: undoes a forward pass that failed half-way (the
    layers it reached had already appended their keys and values)."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.shape[2] > length:
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]
