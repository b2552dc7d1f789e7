"""Speed of the steering engine, side by side in one run: ``python -m steering.bench``.

Everything runs on a random-weights model built from a standard config and a random SAE built
here (nothing is downloaded), in float32 on the machine's CPU (or the first CUDA device with
``--device cuda``). What is measured and how is in ``steering.bench.measure``. ``make bench``
sets ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP reads it when torch loads).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from . import neighbours
from . import stats as sae_stats
from .measure import check, run, table
from .setup import Settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m steering.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench-results.json", help="where to write the JSON results")
    p.add_argument("--repeats", type=int, help="interleaved repeats of the batch-1 variants")
    p.add_argument("--new-tokens", type=int, help="tokens per reply (batch-1 comparisons)")
    p.add_argument("--quick", action="store_true", help="a ~15 s smoke run")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-sae-stats", action="store_true", help="skip the sae-stats figures")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, check the JSON contract, write the file, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Settings.quick() if args.quick else Settings()
    s = replace(s, device=args.device)
    if args.repeats is not None:
        s = replace(s, repeats=args.repeats, users_repeats=max(1, (args.repeats + 1) // 2))
    if args.new_tokens is not None:
        s = replace(s, new_tokens=args.new_tokens, users_new_tokens=args.new_tokens)
    result = run(s)
    check(result)
    result["details"]["neighbours"] = neighbours.measure(args.quick, args.device)
    if not (args.quick or args.no_sae_stats):  # the sae-stats figures: bench/stats.py
        result["details"]["sae_stats"] = sae_stats.run(s)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if "sae_stats" in result["details"]:
        print(sae_stats.table(result["details"]["sae_stats"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
