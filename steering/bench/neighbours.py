"""Speed of one decoder-neighbours query (``steering.features.neighbours``) on an SAE as wide
as Gemma Scope's on Gemma 2 2B: d_sae 65,536, d_in 2,304 (a random float32 decoder built
here). Printed by ``python -m steering.bench`` and kept in its JSON details, never asserted."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..features.neighbours import CHUNK, neighbour_cosines
from .timing import sync_device

FULL = (65_536, 2_304)  # Gemma 2 2B's residual stream and a 64k Gemma Scope SAE
QUICK = (4_096, 256)
REPEATS = 7
TOP = 10


def measure(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Median milliseconds of one top-``TOP`` neighbours query over a random decoder, each
    query on another feature; prints one line."""
    d_sae, d_in = QUICK if quick else FULL
    where = torch.device(device)
    g = torch.Generator().manual_seed(0)
    W_dec = (torch.randn(d_sae, d_in, generator=g) / d_in**0.5).to(where)
    neighbour_cosines(W_dec, 0, TOP)  # warm-up
    times = []
    for r in range(REPEATS):
        feature = (r * 7919 + 1) % d_sae
        sync_device(where)
        t0 = time.perf_counter()
        neighbour_cosines(W_dec, feature, TOP)
        sync_device(where)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    line = (
        f"decoder neighbours: one top-{TOP} query, d_sae {d_sae:,} x d_in {d_in:,} "
        f"(chunks of {CHUNK:,} rows, {where.type}): {ms:.1f} ms (median of {REPEATS})"
    )
    print(line)
    return {"d_sae": d_sae, "d_in": d_in, "top": TOP, "chunk": CHUNK, "ms_median": ms}
