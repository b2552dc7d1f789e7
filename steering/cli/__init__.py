"""The ``steering`` command line. Each subcommand parses, calls one library function, prints.

Commands import torch, transformers and gradio only when they run, so ``--version``, ``--help``
and the ``presets`` commands answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import SteeringError
from ..plan import MODES, POSITIONS
from .activations import add_activations_command
from .contrast import add_contrast_commands
from .labels import add_labels_commands
from .presets import add_preset_arguments, add_presets_commands, plan_from_args
from .serve import add_model_arguments, add_serve_command, load_model_from_args
from .stats import add_sae_stats_command
from .sweep import add_sweep_command

if TYPE_CHECKING:
    from ..plan import FeatureEdit


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0 ok, 1 a user error, 2 a usage error)."""
    # OpenMP reads this when torch loads, which no command has done yet: passive waiting keeps
    # 2-thread torch fast on a shared CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)  # a path the user gave (--out, say) is unusable
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling (loading, say)
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `steering ... | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``steering`` argument parser with every subcommand (builds without heavy imports)."""
    parser = argparse.ArgumentParser(prog="steering", description=__doc__)
    parser.add_argument("--version", action="version", version=f"steering {__version__}")
    sub = parser.add_subparsers(title="commands")

    gen = sub.add_parser("generate", help="print a steered and a baseline reply to a prompt")
    gen.add_argument("prompt", help="the user message")
    add_model_arguments(gen)
    gen.add_argument(
        "--sae",
        action="append",
        default=[],
        help="SAE folder, file or Hub "
        "reference; repeat for several (features refer to them as 0:, 1:, ...)",
    )
    gen.add_argument("--feature", action="append", default=[], metavar="SPEC", help=FEATURE_HELP)
    gen.add_argument(
        "--positions",
        choices=POSITIONS,
        default="all",
        help="tokens to steer (default: prompt and generated)",
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default 0.7)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit")
    gen.add_argument("--json", action="store_true", help="print one JSON object with both replies")
    add_preset_arguments(gen)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("sae-info", help="describe an SAE: format, hook point, sizes, statistics")
    info.add_argument("sae", help="SAE folder, file, or Hub reference owner/repo[/folder]")
    info.add_argument("--layer", type=int, help="the layer, for files that do not record it")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_sae_info)

    add_serve_command(sub)
    add_presets_commands(sub)
    # the researcher's loop on an SAE, in the order it is used (README)
    add_sae_stats_command(sub)
    add_labels_commands(sub)  # labels import/fetch, and search
    add_contrast_commands(sub)  # contrast, neighbours
    add_activations_command(sub)
    add_sweep_command(sub)
    return parser


FEATURE_HELP = (
    "a feature edit [SAE:]INDEX[:MODE]=VALUE[x] - MODE is clamp (default), add or ablate; a "
    "trailing x means multiples of the feature's max activation. Examples: 8080=40, "
    "8080=10x, 1:12412:add=-5, 42:ablate. Repeat for several"
)


def cmd_generate(args: argparse.Namespace) -> int:
    """``steering generate``: a steered and a baseline reply from one A/B request (demo model
    and SAE when no ``--model`` is given); prints both, or one JSON object with ``--json``."""
    from ..engine import Engine
    from ..formats import load_sae
    from ..limits import Limits
    from ..plan import SteeringPlan
    from ..requests import build_request, collect
    from ..sampling import SamplingParams

    if not args.model:  # the shipped demo world: a first run works offline, in seconds
        from ..demo import MODEL_DIR, SAE_DIR

        args.model, args.sae = str(MODEL_DIR), args.sae or [str(SAE_DIR)]
    model = load_model_from_args(args)
    saes = [load_sae(s, device=model.device) for s in args.sae]
    plan = SteeringPlan(tuple(parse_feature(spec, saes, args.positions) for spec in args.feature))
    preset_plan = plan_from_args(args, model)  # --preset NAME --scale X --strict
    if preset_plan is not None:
        plan = preset_plan + plan
    limits = Limits(max_new_tokens=max(1, args.max_new_tokens))  # the user's own machine
    sampling = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    request = build_request(model, args.prompt, plan, sampling, limits=limits, compare=True)
    replies = collect(Engine(model, limits=limits).stream(request), len(request.rows))
    if args.json:
        steered, baseline = (_reply_json(r) for r in replies)
        print(json.dumps({"prompt": args.prompt, "steered": steered, "baseline": baseline}))
        return 0
    for name, reply in zip(("steered", "baseline"), replies):
        print(f"--- {name} ({reply.finish_reason}, {reply.completion_tokens} tokens)")
        print(reply.text)
    return 0


def _reply_json(reply: object) -> dict[str, object]:
    keys = ("text", "finish_reason", "completion_tokens")
    return {key: getattr(reply, key) for key in keys}


def parse_feature(spec: str, saes: list, positions: str) -> FeatureEdit:
    """``[SAE:]INDEX[:MODE]=VALUE[x]`` or ``[SAE:]INDEX:ablate`` -> a FeatureEdit.

    ``saes`` are the loaded SAEs that ``SAE:`` indexes (0 when left out); raises
    ``SteeringError`` naming the spec when it is malformed or names a missing SAE.
    """
    from ..plan import FeatureEdit

    head, _, value_text = spec.partition("=")
    parts = head.split(":")
    mode = parts.pop() if parts[-1] in MODES else "clamp"
    if not saes:
        raise SteeringError(f"--feature {spec!r} needs an SAE: pass --sae")
    if len(parts) not in (1, 2) or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise SteeringError(f"--feature {spec!r} is not of the form [SAE:]INDEX[:MODE]=VALUE[x]")
    sae_index, feature = (int(p) for p in (["0", *parts] if len(parts) == 1 else parts))
    if not 0 <= sae_index < len(saes):
        raise SteeringError(f"--feature {spec!r} names SAE {sae_index}; valid: 0..{len(saes) - 1}")
    unit = "max_act" if value_text.endswith("x") else "raw"
    if mode == "ablate":
        value = 0.0
    else:
        try:
            value = float(value_text.removesuffix("x"))
        except ValueError:
            raise SteeringError(
                f"--feature {spec!r}: value {value_text!r} is not a number"
            ) from None
    return FeatureEdit(saes[sae_index], feature, mode, value, unit, positions)  # type: ignore[arg-type]


def cmd_sae_info(args: argparse.Namespace) -> int:
    """``steering sae-info``: an SAE's format, hook point, sizes, Neuronpedia id, and its labels,
    statistics and contexts (how many features have each, and where the labels came from)."""
    from ..features.neuronpedia import import_record_of
    from ..formats import load_sae

    sae = load_sae(args.sae, layer=args.layer)
    record = import_record_of(sae.source) or {}
    facts = {
        "source": sae.source,
        "format": sae.format,
        "hook": str(sae.hook),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "activation": sae.activation + (f" (k={sae.k})" if sae.k else ""),
        "normalization": sae.normalization,
        "model": sae.model_name,
        "neuronpedia_id": sae.neuronpedia_id or record.get("neuronpedia_id"),
        **_feature_facts(sae, record),
    }
    if sae.max_activation is not None:
        facts |= _stats_facts(_stats_metadata(sae.source))
    if args.json:
        print(json.dumps(facts))
    else:
        width = max(map(len, facts))
        for key, value in facts.items():
            shown = "-" if value is None else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _feature_facts(sae: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Which per-feature files the SAE has, how many features each covers, and where its
    labels and max activations came from (a Neuronpedia import's record, when there is one)."""
    stats, frequency = sae.max_activation, sae.frequency
    facts: dict[str, Any] = {
        "max_activation": stats is not None,
        "frequency": frequency is not None,
        "labels": len(sae.labels),
    }
    if sae.labels:
        imported = record.get("labels") == len(sae.labels) and record.get("from")
        facts["labels_from"] = (
            f"Neuronpedia {record.get('neuronpedia_id')} ({record.get('from')}, "
            f"{record.get('imported')})"
            if imported
            else "feature_labels.json"
        )
    if stats is not None:
        approximate = "feature_stats.safetensors" in record.get("wrote", {})
        facts["max_activation_from"] = (
            "Neuronpedia's maxActApprox" if approximate else "feature_stats.safetensors"
        )
        facts["max_activation_median"] = round(float(stats.median()), 4)
    if frequency is not None:
        facts["frequency_median"] = float(f"{float(frequency.median()):.4g}")
    if stats is not None or frequency is not None:  # a feature that never fired
        dead = (frequency == 0) if frequency is not None else (stats == 0)
        facts["dead_features"] = int(dead.sum())
    facts["contexts"] = len(sae.contexts)
    return facts


def _stats_metadata(source: str) -> dict[str, str]:
    """The metadata of the ``feature_stats.safetensors`` that ``load_sae`` reads for ``source``
    (the user's folder wins over the SAE's own, as in ``formats.load_sae``); {} when none."""
    from safetensors import safe_open

    from ..formats import FEATURE_STATS_FILE, detect_format
    from ..formats.feature_files import user_folder
    from ..hub import resolve_sae_path

    _, target = detect_format(resolve_sae_path(source))
    folders = [target if target.is_dir() else target.parent, user_folder(source)]
    files = [f / FEATURE_STATS_FILE for f in folders if f is not None]
    files = [f for f in files if f.is_file()]
    if not files:
        return {}
    with safe_open(files[-1], "pt") as f:
        return dict(f.metadata() or {})


def _stats_facts(metadata: dict[str, str]) -> dict[str, Any]:
    """What ``sae-stats`` recorded: tokens counted, the corpus, whether the statistics are
    final (``complete``) and whether the corpus ended (else it was cut at ``max_tokens``);
    None where the file does not say (written by another tool)."""

    def flag(key: str) -> bool | None:
        value = metadata.get(key)
        return None if value not in ("true", "false") else value == "true"

    tokens = metadata.get("tokens", "")
    max_tokens = metadata.get("max_tokens", "none")
    return {
        "stats_tokens": int(tokens) if tokens.isdigit() else None,
        "stats_corpus": metadata.get("corpus"),
        "stats_complete": flag("complete"),
        "stats_corpus_finished": flag("corpus_finished"),
        "stats_max_tokens": int(max_tokens) if max_tokens.isdigit() else None,
    }
