"""A feature's card on the page: its label, index and SAE, how it steers, and the contexts it
fires on most. Labels and contexts come from SAE files and presets a visitor may upload, so
every piece of text is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from steering.serve import FeatureContext

from .features import FeatureRow

MODES = {"clamp": "clamped", "add": "added", "ablate": "ablated (set to 0)"}
CONTEXT_CHARS = 40  # each side of the highlighted token


def card_html(row: FeatureRow, contexts: Sequence[FeatureContext] = ()) -> str:
    """The card's head as HTML: the label, then "#index · SAE · mode, unit", then up to a
    few top activating contexts with the token highlighted."""
    unit = "× max activation" if row.unit == "max_act" else "raw units"
    how = MODES.get(row.mode, row.mode) + ("" if row.mode == "ablate" else f", in {unit}")
    parts = [
        '<div class="feature-head">',
        f'<div class="feature-label">{escape(row.label)}</div>',
        f'<div class="feature-meta">#{row.feature} · SAE <code>{escape(row.ref)}</code>'
        f" · {escape(how)}</div>",
    ]
    if contexts:
        items = "".join(f"<li>{_context(c)}</li>" for c in contexts)
        parts.append(
            '<div class="feature-meta">Fires most on:</div>'
            f'<ul class="feature-contexts">{items}</ul>'
        )
    parts.append("</div>")
    return "".join(parts)


def _context(context: FeatureContext) -> str:
    left = context.left[-CONTEXT_CHARS:]
    right = context.right[:CONTEXT_CHARS]
    left = ("…" if len(context.left) > CONTEXT_CHARS else "") + left
    right = right + ("…" if len(context.right) > CONTEXT_CHARS else "")
    token = context.token
    # A word-level tokenizer's pieces carry no spaces ("walked" "across" "the"): put one
    # between two words that would otherwise run together when read or copied.
    before = " " if _runs_together(left, token) else ""
    after = " " if _runs_together(token, right) else ""
    return (
        f"{escape(left)}{before}<mark>{escape(token)}</mark>{after}{escape(right)}"
        f' <span class="feature-meta">({context.activation:.2g})</span>'
    )


def _runs_together(first: str, second: str) -> bool:
    """Whether ``first`` ends and ``second`` starts with a Latin letter or digit."""
    return bool(first and second) and all(
        c.isascii() and c.isalnum() for c in (first[-1], second[0])
    )
