"""``steering contrast`` and ``steering neighbours``: search an SAE's features by contrast
between two prompt sets, and by decoder neighbours (``steering.features``)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..errors import SteeringError
from .serve import add_model_arguments, load_model_from_args

UNBOUNDED = 10**9  # the user's own machine: no request bounds beyond the model's context


def add_contrast_commands(subparsers: Any) -> None:
    """Add ``contrast`` and ``neighbours`` to the ``steering`` command line."""
    con = subparsers.add_parser(
        "contrast",
        help="the SAE features that fire more on some prompts than on others (or everyday ones)",
    )
    con.add_argument("file", nargs="?", help="a file of prompts, one per line (set A)")
    con.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT", help="a prompt of set A; repeat"
    )
    con.add_argument(
        "--against",
        metavar="FILE",
        help="set B: a file of prompts, one per line (default: a built-in set of everyday prompts)",
    )
    con.add_argument(
        "--against-prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt of set B; repeat",
    )
    add_model_arguments(con)
    con.add_argument("--sae", help="SAE folder, file or Hub reference (default: the demo SAE)")
    con.add_argument("--layer", type=int, help="the SAE's layer, for files that do not record it")
    con.add_argument("--top", type=int, default=20, help="features to list (default 20)")
    con.add_argument(
        "--by",
        choices=("difference", "effect_size"),
        default="difference",
        help="rank by the difference of the means (default) or by Cohen's d",
    )
    con.add_argument("--json", action="store_true", help="print one JSON object")
    con.set_defaults(func=cmd_contrast)

    nb = subparsers.add_parser(
        "neighbours", help="the features whose decoder directions are closest to a feature's"
    )
    nb.add_argument("sae", help="SAE folder, file or Hub reference owner/repo[/folder]")
    nb.add_argument("feature", type=int, help="the feature's index")
    nb.add_argument("--top", type=int, default=10, help="neighbours to list (default 10)")
    nb.add_argument("--layer", type=int, help="the layer, for files that do not record it")
    nb.add_argument("--device", help="cpu, cuda, mps (default cpu)")
    nb.add_argument("--json", action="store_true", help="print one JSON object")
    nb.set_defaults(func=cmd_neighbours)


def read_prompts(
    path: str | None, flag: str, more: list[str], more_flag: str
) -> tuple[list[str], list[str]]:
    """The non-blank lines of ``path`` (None: no file), stripped (``sweep.read_prompt_file``),
    then the prompts ``more`` of the flag ``more_flag``; and each prompt's place for errors
    ("FILE a.txt line 3", "--prompt 2"). ``SteeringError`` naming ``flag`` and the file when
    it is missing, not UTF-8 text or holds no prompt."""
    from .sweep import read_prompt_file_places

    prompts, places = read_prompt_file_places(path, flag) if path else ([], [])
    return prompts + more, places + [f"{more_flag} {i + 1}" for i in range(len(more))]


def cmd_contrast(args: argparse.Namespace) -> int:
    """``steering contrast``: rank the SAE's features by how much more they fire on set A."""
    from ..features.contrast import contrast, contrast_json, distinct
    from ..formats import load_sae
    from ..limits import Limits

    if not args.model:  # the shipped demo world
        from ..demo import MODEL_DIR, SAE_DIR

        args.model, args.sae = str(MODEL_DIR), args.sae or str(SAE_DIR)
    if not args.sae:
        raise SteeringError("contrast needs an SAE with --model: pass --sae")
    prompts, places = read_prompts(args.file, "FILE", args.prompt, "--prompt")
    if not prompts:
        raise SteeringError("contrast needs prompts: a FILE or --prompt TEXT")
    against, against_places = read_prompts(
        args.against, "--against", args.against_prompt, "--against-prompt"
    )
    model = load_model_from_args(args)
    sae = load_sae(args.sae, device=model.device, layer=args.layer)
    limits = Limits(
        max_contrast_prompts=UNBOUNDED,
        max_contrast_prompt_chars=UNBOUNDED,
        max_contrast_results=UNBOUNDED,
    )
    found = contrast(
        model, sae, prompts, against or None, top=args.top, by=args.by, limits=limits,
        progress=not args.json, places=(places, against_places),
    )  # fmt: skip
    n_a, n_b = len(distinct(prompts)), len(distinct(against))
    dropped = len(prompts) - n_a + len(against) - n_b
    if args.json:
        print(json.dumps({
            "sae": sae.source,
            "by": args.by,
            "prompts": n_a,
            "against": n_b if against else None,
            "duplicates": dropped,
            "features": [contrast_json(f) for f in found],
        }))  # fmt: skip
        return 0
    baseline = f"{n_b} prompts" if against else "the everyday baseline"
    note = f" ({dropped} duplicate{'s' * (dropped != 1)} dropped)" if dropped else ""
    print(f"{n_a} prompts against {baseline}{note}, ranked by {args.by.replace('_', ' ')}")
    rows = [
        (
            str(f.index), f.label or "", f"{f.mean_a:.4g}", f"{f.mean_b:.4g}",
            f"{f.difference:.4g}", _effect(f.effect_size),
        )
        for f in found
    ]  # fmt: skip
    print_table(("feature", "label", "mean A", "mean B", "difference", "effect size"), rows)
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    """``steering neighbours``: the features nearest a feature by decoder cosine."""
    from ..features.neighbours import decoder_neighbours, neighbour_json
    from ..formats import load_sae

    sae = load_sae(args.sae, layer=args.layer, device=args.device)
    found = decoder_neighbours(sae, args.feature, top=args.top)
    if args.json:
        print(json.dumps({
            "sae": sae.source,
            "feature": args.feature,
            "label": sae.labels.get(args.feature),
            "neighbours": [neighbour_json(n) for n in found],
        }))  # fmt: skip
        return 0
    label = sae.labels.get(args.feature)
    print(f"feature {args.feature}" + (f" ({label})" if label else "") + ": nearest by decoder")
    rows = [(str(n.index), n.label or "", f"{n.cosine:.4f}") for n in found]
    print_table(("feature", "label", "cosine"), rows)
    return 0


LABEL_WIDTH = 48  # a longer label is cut with an ellipsis


def print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns aligned: the label (second column) to the left, numbers to the right."""
    rows = [
        tuple(c if j != 1 or len(c) <= LABEL_WIDTH else c[: LABEL_WIDTH - 1] + "…"
              for j, c in enumerate(row))
        for row in rows
    ]  # fmt: skip
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    for row in [head, *rows]:
        cells = [c.ljust(w) if j == 1 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


def _effect(d: float) -> str:
    return f"{d:.3g}" if math.isfinite(d) else ("inf" if d > 0 else "-inf")
