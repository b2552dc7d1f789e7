"""Decoder neighbours: the features whose decoder directions point closest to a feature's.

As Anthropic mapped the neighbourhood of its Golden Gate Bridge feature ("Scaling
Monosemanticity", 2024), the neighbours of feature i are the rows of ``W_dec`` (d_sae, d_in)
with the highest cosine similarity to row i. The cosines are computed in chunks of rows with a
running top-k, so memory holds one (chunk,) block of cosines and never a (d_sae, d_sae) matrix.

An SAE's neighbours never change: ``cached_neighbours`` keeps each feature's answer for as
long as the SAE is loaded (the page's feature card and the API ask through it).

A row of zero norm (a dead feature whose decoder direction is 0) has no direction: its cosine
with any feature is defined as 0 (never NaN), and a feature whose own row is 0 has no
neighbours (``RequestError``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import RequestError
from ..sae import SAE

CHUNK = 16_384  # decoder rows per block: a (CHUNK, d_in) float32 copy at most
CACHED_TOP = 32  # neighbours computed per feature for the cache (a larger top is computed anew)
CACHED_FEATURES = 4096  # features whose neighbours the cache keeps per SAE (the oldest go)


@dataclass(frozen=True)
class Neighbour:
    """A feature near another in decoder space: its ``index`` (0..d_sae-1), the ``cosine``
    similarity of its decoder direction with the other's (-1..1, unit-free), and its
    ``label`` (None when the SAE has none)."""

    index: int
    cosine: float
    label: str | None


def decoder_neighbours(
    sae: SAE, feature: int, top: int = 10, chunk: int = CHUNK
) -> list[Neighbour]:
    """The ``top`` features whose decoder directions have the highest cosine similarity with
    feature ``feature``'s, best first (equal cosines: the lower index first); the feature
    itself is left out (so at most d_sae - 1 are listed). Computed in float32 on the SAE's
    device, ``chunk`` rows at a time.

    Raises ``RequestError`` for a feature outside 0..d_sae-1, a ``top`` below 1, or a
    feature whose decoder direction is 0.
    """
    d_sae = sae.d_sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise RequestError(
            f"feature: {feature!r} is not a feature of this SAE (valid: 0..{d_sae - 1})",
            param="feature",
        )
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise RequestError(f"top: {top!r} must be a positive integer", param="top")
    values, indices = neighbour_cosines(sae.W_dec, feature, min(top, d_sae - 1), chunk)
    return [
        Neighbour(index=i, cosine=v, label=sae.labels.get(i))
        for v, i in zip(values.tolist(), indices.tolist())
    ]


def neighbour_cosines(
    W_dec: Tensor, feature: int, top: int, chunk: int = CHUNK
) -> tuple[Tensor, Tensor]:
    """(top,) cosines and (top,) indices of the rows of ``W_dec`` (d_sae, d_in) closest to row
    ``feature``, the row itself left out, best first; see ``decoder_neighbours``."""
    with torch.inference_mode():
        query = W_dec[feature].float()
        norm = query.norm()
        if norm == 0:
            raise RequestError(
                f"feature: {feature} has a zero decoder direction (a dead feature): "
                "it has no neighbours",
                param="feature",
            )
        query = query / norm
        best_v = torch.empty(0, device=W_dec.device)
        best_i = torch.empty(0, dtype=torch.long, device=W_dec.device)
        for start in range(0, W_dec.shape[0], chunk):
            rows = W_dec[start : start + chunk].float()
            norms = rows.norm(dim=1)
            cos = (rows @ query) / torch.where(norms > 0, norms, torch.ones_like(norms))
            if start <= feature < start + rows.shape[0]:
                cos[feature - start] = -torch.inf  # never its own neighbour
            index = torch.arange(start, start + rows.shape[0], device=W_dec.device)
            best_v, best_i = _top(torch.cat([best_v, cos]), torch.cat([best_i, index]), top)
    return best_v.cpu(), best_i.cpu()


def _top(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest ``values`` with their ``indices``; equal values by lower index.

    ``indices`` ascend among equal values (the running best come before later chunks, each in
    order). ``topk`` finds the k-th largest value but may break ties either way, so every
    value at least as large is kept (in order) and that small set is sorted stably."""
    if values.shape[0] > k:
        kth = torch.topk(values, k).values[-1]
        keep = values >= kth
        values, indices = values[keep], indices[keep]
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return values[order], indices[order]


def neighbour_json(found: Neighbour) -> dict[str, object]:
    """``found`` as a JSON object."""
    return {"feature": found.index, "label": found.label, "cosine": found.cosine}


_cache: weakref.WeakKeyDictionary[SAE, dict[int, tuple[tuple[int, float], ...]]] = (
    weakref.WeakKeyDictionary()
)
_cache_lock = threading.Lock()


def cached_neighbours(sae: SAE, feature: int, top: int = 10) -> list[Neighbour]:
    """``decoder_neighbours(sae, feature, top)``, computed once per feature (at least
    ``CACHED_TOP`` of them) and kept while ``sae`` is alive; labels are read at each call (an
    SAE's labels may be loaded later). Raises what ``decoder_neighbours`` raises."""
    with _cache_lock:
        known = _cache.get(sae, {}).get(feature)
    if known is None or (len(known) < top and len(known) < sae.d_sae - 1):
        found = decoder_neighbours(sae, feature, max(top, CACHED_TOP))
        known = tuple((n.index, n.cosine) for n in found)
        with _cache_lock:
            per_sae = _cache.setdefault(sae, {})
            if feature not in per_sae and len(per_sae) >= CACHED_FEATURES:
                per_sae.pop(next(iter(per_sae)))
            per_sae[feature] = known
    elif isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise RequestError(f"top: {top!r} must be a positive integer", param="top")
    return [Neighbour(i, cosine, sae.labels.get(i)) for i, cosine in known[:top]]
