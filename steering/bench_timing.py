"""Timing helpers for the benchmark: interleaved repeats, medians, paired ratios."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, label: str, device: torch.device
) -> dict[str, list[float]]:
    """Wall seconds of each variant, ``repeats`` times, the order rotating every repeat."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync_device(device)
            t0 = time.perf_counter()
            variants[name]()
            sync_device(device)
            times[name].append(time.perf_counter() - t0)
        summary = "  ".join(f"{n} {times[n][-1] * 1e3:.0f}ms" for n in names)
        log(f"[{label} {r + 1}/{repeats}] {summary}")
    return times


def per_call(fn: Callable[[], Any], *, blocks: int = 7, min_block_s: float = 0.02) -> float:
    """Median seconds per call of a fast function, timed in blocks of calls."""
    fn()
    n, t = 1, 0.0
    while True:  # calibrate the block size
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_block_s or n >= 1 << 16:
            break
        n *= 2
    samples = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(base: Sequence[float], other: Sequence[float]) -> float:
    """Median over repeats of base time / other time (a speed ratio of ``other``)."""
    return statistics.median(b / o for b, o in zip(base, other))
