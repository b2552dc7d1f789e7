"""``steering sweep``: calibrate a steering's strength on a prompt set (see
``steering.features.sweep``): per multiplier, how often the replies bring the concept in, how
fluent they stay and how many end well; a table, CSV/JSON/PNG files, and the suggested
strength written into a preset."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteeringError
from ..plan import POSITIONS, UNITS
from .presets import PATHS_HELP
from .serve import add_model_arguments, load_model_from_args

if TYPE_CHECKING:
    from ..features.sweep import Concept, SweepResult
    from ..models import SteerableModel
    from ..plan import SteeringPlan
    from ..presets.schema import Preset

DEFAULT_MULTIPLIERS = "0,0.5,1,2,4,8,16"
DEMO_PROMPTS = 60  # the held-out test prompts of docs/demo-world.md's Golden Gate curve
MAX_PROMPT_FILE_BYTES = 10 * 1024 * 1024
# steering.features.sweep's defaults (a test holds them equal): it imports torch, and the
# parser builds without it
DEFAULT_FLUENCY_BOUND = 1.0
DEFAULT_WELL_FORMED_DROP = 0.1


def add_sweep_command(subparsers: Any) -> None:
    """Add ``sweep`` to the ``steering`` command line."""
    p = subparsers.add_parser(
        "sweep",
        help="calibrate a steering's strength: concept rate, fluency and well-formed replies "
        "per multiplier, and a suggested multiplier",
        description=__doc__,
    )
    add_model_arguments(p)
    p.add_argument("--sae", action="append", default=[], help="SAE folder, file or Hub reference")
    p.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="SPEC",
        help="[SAE:]INDEX[:MODE] (MODE clamp, the default, or add): a feature whose value is "
        "the multiplier, in multiples of its max activation (--unit raw: raw units); repeat to "
        "steer several together",
    )
    p.add_argument("--unit", choices=UNITS, default="max_act", help="of --feature multipliers")
    p.add_argument("--positions", choices=POSITIONS, default="all", help="tokens --feature steers")
    p.add_argument(
        "--preset", metavar="NAME", help="sweep a preset: a multiplier scales its strengths"
    )
    p.add_argument("--presets", action="append", default=[], metavar="PATH", help=PATHS_HELP)
    p.add_argument("--strict", action="store_true", help="refuse a preset made for another model")
    p.add_argument(
        "--multipliers",
        default=DEFAULT_MULTIPLIERS,
        help=f"comma-separated; 0 (unsteered) is always run (default {DEFAULT_MULTIPLIERS})",
    )
    concept = p.add_mutually_exclusive_group(required=True)
    concept.add_argument(
        "--concept", metavar="WORDS", help="comma-separated keywords, matched as whole words"
    )
    concept.add_argument("--regex", metavar="RE", help="a regular expression (any case)")
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="prompts: one per line, or a .json list of strings or chats (default for the demo "
        f"world: its {DEMO_PROMPTS} held-out test prompts)",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--seed", type=int, default=0, help="prompt i samples with seed+i (default 0)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="reply length limit (96)")
    p.add_argument("--batch", type=int, default=256, help="rows decoded together (default 256)")
    p.add_argument(
        "--fluency-bound",
        type=float,
        default=DEFAULT_FLUENCY_BOUND,
        help="most nats/token a suggested multiplier's replies may lose over the unsteered "
        f"ones (default {DEFAULT_FLUENCY_BOUND:g})",
    )
    p.add_argument(
        "--well-formed-drop",
        type=float,
        default=DEFAULT_WELL_FORMED_DROP,
        help="largest drop in the share of well-formed replies a suggested multiplier may "
        f"have (default {DEFAULT_WELL_FORMED_DROP:g})",
    )
    p.add_argument("--out", metavar="DIR", help="write sweep.csv, sweep.json and sweep.png here")
    p.add_argument("--json", action="store_true", help="print the sweep as one JSON object")
    p.add_argument(
        "--write-preset", metavar="PATH", help="write a preset at the suggested strength"
    )
    p.add_argument("--name", help="the written preset's name")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --write-preset file"
    )
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``steering sweep``: run the sweep, print the table (or JSON), write the files."""
    from ..features.report import format_table, plot_sweep, to_csv, to_json
    from ..features.sweep import Concept, check_multipliers

    concept = (
        Concept.regex(args.regex) if args.regex is not None else Concept.keywords(args.concept)
    )
    multipliers = check_multipliers(parse_multipliers(args.multipliers))
    if args.feature and args.preset:
        raise SteeringError("sweep: give --feature (one or more) or --preset, not both")
    if not args.feature and not args.preset:
        raise SteeringError("sweep: give --feature (one or more) or --preset")
    _check_settings(args)
    _check_outputs(args)  # before the sweep runs: a bad path fails in a second, not an hour
    demo = not args.model
    prompts = read_prompts(args, demo)
    model, saes = _load(args, demo)
    if args.preset:
        unit_plan, preset = _preset_plan(args, model)
        unit = f"x the strengths of preset {preset.name!r}"
    else:
        unit_plan, preset = _feature_plan(args, saes), None
        unit = _feature_unit(unit_plan)
    try:
        result = _calibrate(args, model, unit_plan, multipliers, prompts, concept, unit)
    except SteeringError as e:
        index = (e.param or "").partition(".")[2]
        if not (e.param or "").startswith("prompts.") or not index.isdigit():
            raise
        raise SteeringError(f"{args.prompt_places[int(index)]}: {e.__cause__}") from None
    if args.json:
        print(json.dumps(to_json(result, replies=False)))
    else:
        print(format_table(result))
    if args.out:
        out = Path(args.out)
        (out / "sweep.csv").write_text(to_csv(result))
        (out / "sweep.json").write_text(json.dumps(to_json(result), indent=1) + "\n")
        plot_sweep(result, out / "sweep.png")
        print(f"wrote {out / 'sweep.csv'}, sweep.json and sweep.png", file=sys.stderr)
    if args.write_preset:
        written = _suggested_preset(args, result, unit_plan, preset, saes, demo)
        path = write_preset(written, Path(args.write_preset), overwrite=args.overwrite)
        print(f"wrote preset {written.name!r} to {path}", file=sys.stderr)
    return 0


def _calibrate(
    args: argparse.Namespace,
    model: SteerableModel,
    unit_plan: SteeringPlan,
    multipliers: tuple[float, ...],
    prompts: list[Any],
    concept: Concept,
    unit: str,
) -> SweepResult:
    """``calibrate`` with the command line's settings."""
    from ..features.sweep import calibrate

    return calibrate(
        model,
        unit_plan,
        multipliers,
        prompts,
        concept=concept,
        unit=unit,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_rows=args.batch,
        fluency_bound=args.fluency_bound,
        well_formed_drop=args.well_formed_drop,
        progress=True,
    )


def parse_multipliers(text: str) -> list[float]:
    """``"0,1,2.5"`` -> [0.0, 1.0, 2.5]; ``SteeringError`` naming an item that is no finite
    number (count bounds: ``steering.features.sweep.check_multipliers``)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise SteeringError(
                f"--multipliers: {item.strip()!r} is not a finite number; give e.g. 0,1,2,4,8"
            )
        values.append(value)
    return values


def _check_settings(args: argparse.Namespace) -> None:
    """``SteeringError`` naming the flag of a count outside the sweep's bounds."""
    from ..features.sweep import MAX_BATCH_ROWS, MAX_NEW_TOKENS

    for flag, value, most in (
        ("--batch", args.batch, MAX_BATCH_ROWS),
        ("--max-new-tokens", args.max_new_tokens, MAX_NEW_TOKENS),
    ):
        if not 1 <= value <= most:
            raise SteeringError(f"{flag}: {value} is not in 1..{most}")


def _check_outputs(args: argparse.Namespace) -> None:
    """``SteeringError`` naming an output path that cannot be written: ``--out`` that is a
    file (its folder is made here), ``--write-preset`` that exists (without ``--overwrite``),
    is a folder, or whose folder cannot be made."""
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise SteeringError(f"--out: {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SteeringError(f"--out: cannot make the folder {out} ({e.strerror})") from None
    if args.write_preset:
        path = Path(args.write_preset)
        if path.is_dir():
            raise SteeringError(f"--write-preset: {path} is a folder; give a file name")
        if path.exists() and not args.overwrite:
            raise SteeringError(f"--write-preset: {path} exists; pass --overwrite to replace it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SteeringError(
                f"--write-preset: cannot make the folder {path.parent} ({e.strerror})"
            ) from None


def read_prompts(args: argparse.Namespace, demo: bool) -> list[Any]:
    """The prompts of ``--prompt`` and ``--prompts FILE`` (a text file with one prompt per line,
    or a .json list of strings or chats); the demo world's held-out prompts when neither is
    given for the demo model. ``SteeringError`` for a missing or malformed file, or none.
    Sets ``args.prompt_places``: where each prompt came from, for errors ("--prompts FILE
    line 3")."""
    from ..features.sweep import MAX_PROMPTS

    prompts: list[Any] = list(args.prompt)
    args.prompt_places = [f"--prompt {i + 1}" for i in range(len(prompts))]
    blank = [i + 1 for i, p in enumerate(prompts) if not p.strip()]
    if blank:
        raise SteeringError(f"sweep: --prompt {blank[0]} is blank")
    if args.prompts:
        found, places = read_prompt_file_places(args.prompts, "--prompts", allow_json=True)
        prompts += found
        args.prompt_places += places
    if not prompts and demo:
        from ..demo.corpus import held_out_prompts

        prompts = held_out_prompts(DEMO_PROMPTS, "test")
        args.prompt_places = [f"demo prompt {i + 1}" for i in range(len(prompts))]
    if not prompts:
        raise SteeringError("sweep: give prompts with --prompts FILE or --prompt TEXT")
    if len(prompts) > MAX_PROMPTS:
        raise SteeringError(f"sweep: {len(prompts)} prompts, at most {MAX_PROMPTS}")
    return prompts


def read_prompt_file(path: str, flag: str, allow_json: bool = False) -> list[Any]:
    """``read_prompt_file_places``'s prompts alone."""
    return read_prompt_file_places(path, flag, allow_json)[0]


def read_prompt_file_places(
    path: str, flag: str, allow_json: bool = False
) -> tuple[list[Any], list[str]]:
    """The prompts of a file a user gives: its non-blank lines, stripped, or (``allow_json``
    and a ``.json`` name) a JSON list of strings or chats. ``SteeringError`` naming ``flag``
    and the file when it is missing, over ``MAX_PROMPT_FILE_BYTES``, not UTF-8 text, not
    valid JSON, or holds no prompt (a given file never falls back to built-in prompts).
    With them, where each prompt is: ``"{flag} {path} line N"`` (``item N`` in a JSON list,
    from 1)."""
    file = Path(path)
    if not file.is_file():
        raise SteeringError(f"{flag}: no such file: {file}")
    if file.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise SteeringError(f"{flag}: {file} is over {MAX_PROMPT_FILE_BYTES} bytes")
    try:
        text = file.read_bytes().decode("utf-8").removeprefix("\ufeff")  # a BOM is not a prompt
    except UnicodeDecodeError as e:
        raise SteeringError(
            f"{flag}: {file} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x})"
        ) from None
    except OSError as e:
        raise SteeringError(f"{flag}: cannot read {file} ({e.strerror})") from None
    if "\x00" in text:
        raise SteeringError(f"{flag}: {file} is not text (it holds NUL bytes)")
    found: list[Any]
    if allow_json and file.suffix == ".json":
        try:
            found = json.loads(text)
        except ValueError as e:
            raise SteeringError(f"{flag}: {file} is not valid JSON ({e})") from None
        if not isinstance(found, list) or not all(isinstance(p, (str, list)) for p in found):
            raise SteeringError(
                f"{flag}: {file} must hold a JSON list of strings or of chats "
                '([{"role": "user", "content": "..."}])'
            )
        blank = [i + 1 for i, p in enumerate(found) if isinstance(p, str) and not p.strip()]
        if blank:
            raise SteeringError(f"{flag}: {file} item {blank[0]} is a blank prompt")
        places = [f"{flag} {file} item {i + 1}" for i in range(len(found))]
    else:
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        found = [line for _, line in lines]
        places = [f"{flag} {file} line {n}" for n, _ in lines]
    if not found:
        raise SteeringError(f"{flag}: {file} holds no prompts (give one per line)")
    return found, places


def _load(args: argparse.Namespace, demo: bool) -> tuple[SteerableModel, list]:
    """The model and the ``--sae`` SAEs (the demo world's when no ``--model`` is given, as
    ``steering generate``; then ``args.sae`` names the demo SAE)."""
    from ..formats import load_sae

    name = args.model
    if demo:
        from ..demo import MODEL_DIR, SAE_DIR

        name, args.sae = str(MODEL_DIR), args.sae or [str(SAE_DIR)]
    model = load_model_from_args(args, name)
    saes = [load_sae(s, device=model.device) for s in args.sae] if args.feature else []
    return model, saes


def _feature_plan(args: argparse.Namespace, saes: list) -> SteeringPlan:
    """The ``--feature`` edits at multiplier 1: value 1 (x max activation with --unit max_act)."""
    from ..plan import SteeringPlan
    from . import parse_feature

    edits = []
    for spec in args.feature:
        if "=" in spec or spec.rstrip().endswith(":ablate"):
            raise SteeringError(
                f"--feature {spec!r}: a sweep's feature is [SAE:]INDEX[:MODE] with MODE clamp or "
                "add and no value; the multipliers are its values"
            )
        suffix = "=1x" if args.unit == "max_act" else "=1"
        edits.append(parse_feature(spec + suffix, saes, args.positions))
    return SteeringPlan(tuple(edits))


def _feature_unit(plan: SteeringPlan) -> str:
    edit = plan.edits[0]
    verb = "clamp value" if edit.mode == "clamp" else "amount added"
    features = ", ".join(str(e.feature) for e in plan.edits)
    unit = "x max activation" if edit.unit == "max_act" else "raw units"
    plural = "s" if len(plan.edits) > 1 else ""
    return f"{verb} of feature{plural} {features}, {unit}, {edit.positions} tokens"


def _preset_plan(args: argparse.Namespace, model: SteerableModel) -> tuple[SteeringPlan, Preset]:
    from ..presets.library import PresetRegistry
    from ..presets.saes import SAEResolver
    from ..presets.to_plan import plan_for_presets

    try:
        entry = PresetRegistry.discover(args.presets).get(args.preset)
    except SteeringError as e:
        message = str(e).rstrip(".")
        raise SteeringError(f"--preset: {message}.") from None
    plan, warnings = plan_for_presets(
        [entry], model, SAEResolver(device=model.device), strict=args.strict
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return plan, entry.preset


def _suggested_preset(
    args: argparse.Namespace,
    result: SweepResult,
    unit_plan: SteeringPlan,
    preset: Preset | None,
    saes: list,
    demo: bool,
) -> Preset:
    """The preset at the suggested multiplier: a copy of ``preset`` at that scale, or the
    ``--feature`` edits at that value."""
    from ..features.calibrated_preset import describe_calibration, preset_at_scale, preset_for_plan

    if result.suggested is None:
        raise SteeringError(f"--write-preset: no preset written: {result.reason}")
    note = describe_calibration(result)
    if preset is not None:
        return preset_at_scale(preset, result.suggested, note, name=args.name)
    from ..demo import MODEL_ID, SAE_DIR
    from ..presets.saes import DEMO_SAE_REF

    refs = []
    for sae, ref in zip(saes, args.sae):
        path = Path(ref).expanduser()
        if path.resolve() == SAE_DIR.resolve():
            ref = DEMO_SAE_REF
        elif path.exists():
            ref = str(path.resolve())  # a preset reads relative paths from its own folder
        refs.append((sae, ref))
    used = {id(e.sae) for e in unit_plan.edits}
    refs = [(sae, ref) for sae, ref in refs if id(sae) in used]
    features = ", ".join(str(e.feature) for e in unit_plan.edits)
    name = args.name or f"features {features} at {result.suggested:g}"[:80]
    return preset_for_plan(
        unit_plan.scaled(result.suggested),
        name=name,
        model_id=MODEL_ID if demo else args.model,
        sae_refs=refs,
        description=note,
    )


def write_preset(preset: Preset, path: Path, overwrite: bool = False) -> Path:
    """Write ``preset`` to ``path`` and read it back (so a file that would not load is never
    left behind unnoticed); returns the path. ``SteeringError`` when ``path`` exists and not
    ``overwrite``."""
    from ..presets.library import read_preset_file
    from ..presets.schema import dump_preset

    if path.exists() and not overwrite:
        raise SteeringError(f"--write-preset: {path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_preset(preset), encoding="utf-8")
    read_preset_file(path)
    return path
