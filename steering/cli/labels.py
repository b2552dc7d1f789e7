"""``steering labels import | fetch`` (Neuronpedia's labels and max activations for an SAE) and
``steering search`` (an SAE's features by label text, or by index)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SAE_HELP = "SAE folder, file or Hub reference owner/repo[/folder]"
ID_HELP = (
    "Neuronpedia's MODEL_ID/SOURCE_ID of the SAE (e.g. gemma-2-2b/20-gemmascope-res-16k), when "
    "its files do not say it or say another"
)


def add_labels_commands(subparsers: Any) -> None:
    """Add ``labels`` (with ``import`` and ``fetch``) and ``search`` to the command line."""
    labels = subparsers.add_parser("labels", help="feature labels from Neuronpedia")
    labels.set_defaults(func=lambda _args: labels.print_help() or 2)
    sub = labels.add_subparsers(title="label commands")

    imp = sub.add_parser(
        "import",
        help="read Neuronpedia's exports (or a saved feature API answer) into an SAE's labels",
    )
    imp.add_argument("path", type=Path, help="a .jsonl(.gz)/.json file or a folder of batches")
    _common(imp)
    imp.set_defaults(func=cmd_import)

    fetch = sub.add_parser("fetch", help="download an SAE's Neuronpedia exports and import them")
    _common(fetch)
    fetch.add_argument(
        "--download-dir",
        type=Path,
        help="where the batches are kept (default: STEERING_HOME/neuronpedia)",
    )
    fetch.add_argument(
        "--labels-only", action="store_true", help="skip the features batches (max activations)"
    )
    fetch.set_defaults(func=cmd_fetch)

    search = subparsers.add_parser("search", help="find an SAE's features by label, or by index")
    search.add_argument("query", help="words of a label, or an index (123 or #123)")
    search.add_argument("--sae", help=SAE_HELP + " (default: the demo SAE)")
    search.add_argument("--layer", type=int, help="the layer, for files that do not record it")
    search.add_argument("--limit", type=int, default=20, help="most results (default 20)")
    search.add_argument("--json", action="store_true", help="print one JSON object")
    search.set_defaults(func=cmd_search)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sae", required=True, help=SAE_HELP)
    parser.add_argument("--layer", type=int, help="the layer, for files that do not record it")
    parser.add_argument("--neuronpedia-id", metavar="MODEL/SOURCE", help=ID_HELP)
    parser.add_argument(
        "--out",
        type=Path,
        help="folder to write feature_labels.json etc. to (default: next to a local SAE; for a "
        "Hub SAE the user's folder, which load_sae reads)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace feature_labels.json instead of merging into the labels an earlier import "
        "wrote (needed for one that no import wrote)",
    )


def cmd_import(args: argparse.Namespace) -> int:
    """``steering labels import PATH --sae SAE``: prints what was written."""
    from ..features.neuronpedia import import_neuronpedia
    from ..formats import load_sae

    sae = load_sae(args.sae, layer=args.layer)
    result = import_neuronpedia(
        sae,
        args.path,
        neuronpedia_id=args.neuronpedia_id,
        out=args.out,
        replace_labels=args.replace,
    )
    _report(result)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``steering labels fetch --sae SAE``: download the exports, then import them."""
    from ..features.neuronpedia import import_neuronpedia, sae_neuronpedia_id
    from ..features.neuronpedia_fetch import fetch_exports
    from ..formats import load_sae
    from ..formats.feature_files import steering_home

    sae = load_sae(args.sae, layer=args.layer)
    np_id = sae_neuronpedia_id(sae, args.neuronpedia_id)
    dest = args.download_dir or steering_home() / "neuronpedia"
    kinds = ("explanations",) if args.labels_only else ("explanations", "features")
    options = [("--layer", args.layer), ("--neuronpedia-id", args.neuronpedia_id)]
    options += [("--out", args.out), ("--replace", args.replace)]
    import_options = [
        part
        for flag, value in options
        if value not in (None, False)
        for part in ([flag] if value is True else [flag, str(value)])
    ]
    folder = fetch_exports(
        np_id, dest, sae.d_sae, sae_ref=args.sae, import_options=import_options, kinds=kinds
    )
    print(f"fetched Neuronpedia's exports of {np_id} into {folder}")
    result = import_neuronpedia(
        sae,
        folder,
        neuronpedia_id=str(np_id),
        out=args.out,
        replace_labels=args.replace,
        origin=f"https://www.neuronpedia.org/{np_id} (exports)",
    )
    _report(result)
    return 0


def _report(result: Any) -> None:
    from ..features.neuronpedia import LABELS_FILE, count

    read = count(result.labels, "label")
    if result.labels:
        print(
            f"{read} of Neuronpedia SAE {result.neuronpedia_id} -> {result.folder}: "
            f"{result.added:,} added, {result.updated:,} updated, {result.kept:,} kept "
            f"({count(result.labels_in_file, 'label')} in {LABELS_FILE})"
        )
    else:
        print(f"no labels of Neuronpedia SAE {result.neuronpedia_id}: {LABELS_FILE} left as it is")
    print(result.stats_note)
    if result.bad_rows:
        print(
            f"skipped bad values in {count(result.bad_rows, 'row')} of this SAE; the first: "
            f"{result.first_bad}"
        )
    if result.other_ids:
        skipped = ", ".join(f"{i} ({n} rows)" for i, n in sorted(result.other_ids.items())[:8])
        print(f"skipped rows of other SAEs: {skipped}")


def cmd_search(args: argparse.Namespace) -> int:
    """``steering search QUERY``: the best matches, one a line (index, score, label)."""
    from ..features.labels import check_query, search_labels
    from ..formats import load_sae

    check_query(args.query, args.limit)  # before loading anything
    if not args.sae:
        from ..demo import SAE_DIR

        args.sae = str(SAE_DIR)
    sae = load_sae(args.sae, layer=args.layer)
    found = search_labels(sae, args.query, args.limit)
    if args.json:
        rows = [
            {"index": m.index, "label": m.label, "score": m.score, "match": m.match} for m in found
        ]
        print(json.dumps({"query": args.query, "sae": sae.source, "data": rows}))
        return 0
    if not found:
        labelled = f"{len(sae.labels):,} labelled features" if sae.labels else "no labels"
        print(f"no feature matches {args.query!r} ({labelled}; `steering labels` imports some)")
        return 0
    for m in found:
        score = "index" if m.match == "index" else f"{m.score:.2f}"
        print(f"#{m.index:<7} {score:>6}  {m.label or '(no label)'}")
    return 0
