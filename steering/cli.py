"""The ``steering`` command line. Each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: 2 threads on a shared CPU

from . import __version__  # noqa: E402
from .errors import SteeringError  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except SteeringError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steering", description=__doc__)
    parser.add_argument("--version", action="version", version=f"steering {__version__}")
    sub = parser.add_subparsers(title="commands")

    info = sub.add_parser("sae-info", help="describe an SAE: format, hook point, sizes, statistics")
    info.add_argument("sae", help="SAE folder, file, or Hub reference owner/repo[/folder]")
    info.add_argument("--layer", type=int, help="the layer, for files that do not record it")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_sae_info)
    return parser


def cmd_sae_info(args: argparse.Namespace) -> int:
    from .sae_formats import load_sae

    sae = load_sae(args.sae, layer=args.layer)
    facts = {
        "source": sae.source,
        "format": sae.format,
        "hook": str(sae.hook),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "activation": sae.activation + (f" (k={sae.k})" if sae.k else ""),
        "normalization": sae.normalization,
        "model": sae.model_name,
        "max_activation": sae.max_activation is not None,
        "frequency": sae.frequency is not None,
        "labels": len(sae.labels),
    }
    if args.json:
        print(json.dumps(facts))
    else:
        width = max(map(len, facts))
        for key, value in facts.items():
            print(f"{key:<{width}}  {value}")
    return 0
