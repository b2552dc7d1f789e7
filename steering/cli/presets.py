"""``steering presets list | show | validate | schema`` and the ``--preset`` options of
``steering generate``. Bad input gives ``path.to.field: message`` lines, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PresetError
from ..presets.library import PresetEntry, PresetRegistry, read_preset_file
from ..presets.schema import Preset, PresetEdit, dump_preset, json_schema

if TYPE_CHECKING:
    from ..plan import SteeringPlan
    from ..presets.saes import SAEResolver

PATHS_HELP = "a presets folder or file to add to the built-in ones; repeat for several"


def add_presets_commands(subparsers: Any) -> None:
    """Add ``presets`` and its subcommands to the ``steering`` command line."""
    presets = subparsers.add_parser("presets", help="list, show and validate steering presets")
    presets.set_defaults(func=lambda _args: presets.print_help() or 2)
    sub = presets.add_subparsers(title="preset commands")

    listing = sub.add_parser("list", help="the presets found, with their models")
    listing.add_argument("--presets", action="append", default=[], metavar="PATH", help=PATHS_HELP)
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="describe one preset")
    show.add_argument("name", help="preset name, slug, or .json file")
    show.add_argument("--json", action="store_true", help="print the preset as JSON")
    show.add_argument("--presets", action="append", default=[], metavar="PATH", help=PATHS_HELP)
    show.set_defaults(func=cmd_show)

    validate = sub.add_parser("validate", help="check preset files; exit 1 if any is invalid")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="preset files or folders")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of the preset format")
    schema.set_defaults(func=cmd_schema)


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``generate`` that apply presets."""
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help="apply a preset (name, slug or .json file); repeat to apply several together",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the presets' values (default 1; 0 is the baseline)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a preset made for another model (default: warn)",
    )
    parser.add_argument("--presets", action="append", default=[], metavar="PATH", help=PATHS_HELP)


def plan_from_args(
    args: argparse.Namespace, model: Any, resolver: SAEResolver | None = None
) -> SteeringPlan | None:
    """The plan of the ``--preset`` options on ``model`` (None when there are none)."""
    if not args.preset:
        return None
    from ..presets.saes import SAEResolver
    from ..presets.to_plan import plan_for_presets

    registry = PresetRegistry.discover(args.presets)
    entries = [registry.get(name) for name in args.preset]
    resolver = resolver or SAEResolver(device=model.device)
    plan, warnings = plan_for_presets(
        entries, model, resolver, scale=args.scale, strict=args.strict
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return plan


# ---- commands ----


def cmd_list(args: argparse.Namespace) -> int:
    """``steering presets list``: one line per preset found; skipped files are warned about."""
    registry = PresetRegistry.discover(args.presets)
    for problem in registry.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    entries = registry.entries
    if not entries:
        print("no presets found")
        return 0
    width = max(len(e.preset.slug) for e in entries)
    for entry in entries:
        p = entry.preset
        checked = "verified" if p.verified else "not verified"
        edits = f"{len(p.edits)} edit" + ("s" if len(p.edits) != 1 else "")
        print(f"{p.slug:<{width}}  {p.name}  ({p.model.id}, {edits}, {checked}, {entry.origin})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = PresetRegistry.discover(args.presets).get(args.name)
    if args.json:
        print(dump_preset(entry.preset), end="")
    else:
        print(describe(entry))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``steering presets validate``: ``ok`` or one line per problem for each file; exit 1 if
    any is invalid."""
    invalid = 0
    for path in _preset_files(args.paths):
        try:
            preset = read_preset_file(path)
        except PresetError as e:
            invalid += 1
            for line in e.problems:
                print(f"{path}: {line}")
            continue
        print(f"{path}: ok ({preset.name!r}, slug {preset.slug})")
    return 1 if invalid else 0


def cmd_schema(_args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _preset_files(paths: list[str]) -> list[Path]:
    """The files named, and the ``*.json`` files of the folders named (a missing or empty folder
    is reported by reading its path, which fails)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        found = sorted(path.glob("*.json")) if path.is_dir() else []
        files += found or [path]
    return files


# ---- describing a preset ----


def describe(entry: PresetEntry) -> str:
    """A preset as people read it."""
    p: Preset = entry.preset
    where = f"{entry.path} ({entry.origin})" if entry.path else entry.origin
    revision = f" @ {p.model.revision}" if p.model.revision else ""
    lines = [
        f"{p.name}  [{p.slug}]",
        f"file:      {where}",
        f"model:     {p.model.id}{revision}",
        f"scale:     {p.scale:g}",
        f"verified:  {'yes' if p.verified else 'no, not checked on the model yet'}",
        f"labels:    {p.labels_source}",
    ]
    if p.description:
        lines += ["", p.description]
    lines += ["", "SAEs:"]
    for s in p.saes:
        lines.append(
            f"  {s.id}: {s.ref} ({s.format or 'any format'}, layer {s.layer} "
            f"{s.site}, d_in {s.d_in}, d_sae {s.d_sae})"
        )
    lines += ["", "Edits:"]
    lines += [f"  {_describe_edit(e)}" for e in p.edits]
    return "\n".join(lines)


def _describe_edit(e: PresetEdit) -> str:
    if e.mode == "ablate":
        action = "ablate"
    else:
        unit = " x max activation" if e.unit == "max_act" else " (raw)"
        assumed = f", assuming max {e.max_activation:g}" if e.max_activation else ""
        action = f"{e.mode} {e.value:g}{unit}{assumed}"
    scope = "" if e.positions == "all" else f", {e.positions} tokens only"
    scope += ", not special tokens" if e.skip_special_tokens else ""
    label = f" {e.label!r}" if e.label else ""
    return f"{e.sae}:{e.feature}{label}: {action}{scope}"
