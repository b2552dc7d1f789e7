"""Batch surgery on transformers' DynamicCache, for continuous batching.

Rows are right-aligned (left padding): a row that joins a running batch is prefilled on its own,
then both caches are left-padded to one length and concatenated; finished rows are selected away
and columns that are padding in every row are trimmed. The engine builds its caches as
``DynamicCache()`` (full ``DynamicLayer``s), whose ``keys``/``values`` are (B, H, T, D) tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


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
