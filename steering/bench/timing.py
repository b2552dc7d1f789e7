"""Timing helpers for the benchmark: interleaved repeats, medians, paired ratios."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .setup import Settings


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


def measure_linear(s: Settings) -> dict[str, dict[str, float]]:
    """Median µs of the model's Linear shapes at 1, 2 and 8 rows: on a CPU one row takes a GEMV
    path and two or more a GEMM path, which is why a batch of 2 is far from free there."""
    dev = torch.device(s.device)
    shapes = {
        f"{s.hidden}->{s.vocab} (lm_head)": (s.hidden, s.vocab),
        f"{s.hidden}->{s.intermediate} (mlp up)": (s.hidden, s.intermediate),
        f"{s.intermediate}->{s.hidden} (mlp down)": (s.intermediate, s.hidden),
        f"{s.hidden}->{s.hidden} (attn proj)": (s.hidden, s.hidden),
    }
    out: dict[str, dict[str, float]] = {}
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for name, (i, o) in shapes.items():
            w = torch.randn(o, i, generator=g).to(dev)
            row = {}
            for m in (1, 2, 8):
                x = torch.randn(m, i, generator=g).to(dev)

                def f(x: torch.Tensor = x, w: torch.Tensor = w) -> Any:
                    y = torch.nn.functional.linear(x, w)
                    sync_device(dev)
                    return y

                row[f"M={m}"] = 1e6 * per_call(f, blocks=5)
            out[name] = row
            log(f"[linear {name}] " + "  ".join(f"{k} {v:.0f}us" for k, v in row.items()))
    return out
