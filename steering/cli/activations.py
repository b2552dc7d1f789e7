"""``steering activations``: which SAE features fire at each token of a text or a chat, on the
unsteered model (``steering.activations.feature_activations``): the activations of chosen
features (``--features``) or each token's strongest features (``--top``), as a table or as
the JSON object ``POST /v1/activations`` answers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteeringError
from .serve import add_model_arguments, load_model_from_args

if TYPE_CHECKING:
    from ..activations import TokenActivations
    from ..sae import SAE

MAX_CHAT_FILE_BYTES = 1024 * 1024
MAX_FEATURES = 64  # columns of the table


def add_activations_command(subparsers: Any) -> None:
    """Add ``activations`` to the ``steering`` command line."""
    p = subparsers.add_parser(
        "activations",
        help="per-token SAE feature activations of a text or a chat (unsteered)",
        description=__doc__,
    )
    p.add_argument("text", nargs="?", help="the text (or give --chat)")
    p.add_argument(
        "--chat",
        metavar="FILE",
        help='a JSON chat: [{"role": "user", "content": "..."}, ...] or {"messages": [...]}; '
        "when it ends with the assistant's reply, the table marks where the reply starts",
    )
    add_model_arguments(p)
    p.add_argument("--sae", help="SAE folder, file or Hub reference (default: the demo SAE)")
    p.add_argument(
        "--features", metavar="LIST", help="comma-separated feature indices: one column each"
    )
    p.add_argument(
        "--top", type=int, metavar="K", help="each token's K strongest features (default 5)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (the API's answer)")
    p.set_defaults(func=cmd_activations)


def cmd_activations(args: argparse.Namespace) -> int:
    """``steering activations``: the table (or JSON) of a text's or a chat's activations."""
    from ..activations import chat_tokens, feature_activations
    from ..formats import load_sae

    if (args.text is None) == (args.chat is None):
        raise SteeringError("activations: give a text or --chat FILE (exactly one)")
    features = parse_features(args.features)
    top_k = 5 if args.top is None else args.top
    text_or_chat = args.text if args.chat is None else read_chat(Path(args.chat))
    model_name, sae_ref = args.model, args.sae
    if not model_name:  # the shipped demo world, as ``steering generate``
        from ..demo import MODEL_DIR
        from ..presets.saes import DEMO_SAE_REF

        model_name, sae_ref = str(MODEL_DIR), sae_ref or DEMO_SAE_REF
    if not sae_ref:
        raise SteeringError("activations: --model needs --sae, the SAE whose features to read")
    model = load_model_from_args(args, model_name)
    sae = load_sae(sae_ref, device=model.device)
    ids, reply_start = chat_tokens(model.tokenizer, text_or_chat, context=model.context_length)
    found = feature_activations(
        model, sae, ids, features=features, top_k=top_k, reply_start=reply_start
    )
    if args.json:
        print(json.dumps(activations_json(found, sae, sae_ref)))
    else:
        print(format_activations(found, sae, show_top=args.top is not None or not features))
    return 0


def parse_features(text: str | None) -> list[int]:
    """``"3,17"`` -> [3, 17]; ``SteeringError`` naming an item that is not an index or too
    many (the SAE checks the range)."""
    if not text:
        return []
    features = []
    for item in text.split(","):
        if not item.strip().isdigit():
            raise SteeringError(
                f"--features: {item.strip()!r} is not a feature index; give e.g. 660,704"
            )
        features.append(int(item))
    if len(features) > MAX_FEATURES:
        raise SteeringError(f"--features: {len(features)} features, at most {MAX_FEATURES}")
    return features


def read_chat(path: Path) -> list[dict[str, str]]:
    """The chat of a JSON file (a list of messages, or an object with ``messages``);
    ``SteeringError`` for a missing, oversized or malformed file (the roles are checked when
    the chat is rendered)."""
    if not path.is_file():
        raise SteeringError(f"--chat: no such file: {path}")
    if path.stat().st_size > MAX_CHAT_FILE_BYTES:
        raise SteeringError(f"--chat: {path} is over {MAX_CHAT_FILE_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SteeringError(f"--chat: {path} is not valid JSON ({e})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
            for m in messages
        )
    ):
        raise SteeringError(
            f'--chat: {path} must hold a list of messages [{{"role": "user", "content": '
            '"..."}] or an object {"messages": [...]}'
        )
    return [{"role": str(m["role"]), "content": m["content"]} for m in messages]


def format_activations(found: TokenActivations, sae: SAE, show_top: bool = True) -> str:
    """A table with a line per token: its index, its text (repr), the activation of each
    requested feature, and (``show_top``) its strongest features as ``index:activation``;
    activations are raw SAE units, 0 where the feature does not fire."""
    columns = list(found.features)
    texts = [repr(t) for t in found.tokens]
    width = max([5, *map(len, texts)])
    head = f"{'#':>4}  {'token':<{width}}" + "".join(f"  {f:>9}" for f in columns)
    lines = [head + ("  top features (activation)" if show_top else "")]
    for t, text in enumerate(texts):
        if t == found.reply_start:
            lines.append("---- the reply starts here")
        line = f"{t:>4}  {text:<{width}}"
        line += "".join(f"  {found.features[f][t]:>9.4f}" for f in columns)
        if show_top:
            line += "  " + " ".join(f"{f}:{a:.4f}" for f, a in found.top[t])
        lines.append(line.rstrip())
    shown = [*columns, *(f for row in found.top for f, _ in row if show_top)]
    labelled = [f for f in shown if f in sae.labels]
    if labelled:
        lines.append("")
        lines += [f"{f}: {sae.labels[f]}" for f in dict.fromkeys(labelled)]
    return "\n".join(lines)


def activations_json(found: TokenActivations, sae: SAE, ref: str) -> dict[str, Any]:
    """The JSON object ``POST /v1/activations`` answers (plus each token's id)."""
    return {
        "object": "activations",
        "sae": ref,
        "tokens": [
            {
                "text": text,
                "id": found.token_ids[t],
                "top": [
                    {"feature": f, "activation": a, "label": sae.labels.get(f)}
                    for f, a in found.top[t]
                ],
                "features": {str(f): values[t] for f, values in found.features.items()},
            }
            for t, text in enumerate(found.tokens)
        ],
        "reply_start": found.reply_start,
        "max_activation": {str(f): m for f, m in found.max_activation.items()},
    }
