"""A feature's card on the page: its label, index and SAE, how it steers, its statistics (max
activation, firing frequency, mean when active), the contexts it fires on most, and its nearest
neighbours by decoder direction. Labels and contexts come from
SAE files and presets a visitor may upload, so every piece of text is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from steering.serve import FeatureContext, Neighbour, Service, SteeringError, cached_neighbours

from .features import FeatureRow

MODES = {"clamp": "clamped", "add": "added", "ablate": "ablated (set to 0)"}
CONTEXT_CHARS = 40  # each side of the highlighted token
SHOWN_NEIGHBOURS = 5
NEIGHBOUR_LABEL_CHARS = 60


def nearest_features(service: Service, row: FeatureRow) -> tuple[Neighbour, ...]:
    """The feature's nearest features by decoder cosine (computed once per feature and kept:
    ``cached_neighbours``); none for an SAE this server does not offer or a dead feature."""
    try:
        sae = service.sae_for(row.ref)
        return tuple(cached_neighbours(sae, row.feature, SHOWN_NEIGHBOURS))
    except SteeringError:
        return ()


def feature_statistics(service: Service, row: FeatureRow) -> tuple[str, ...]:
    """The feature's statistics as short phrases ("max activation 4.51", "fires on 1.3% of
    tokens", "mean 1.2 when active"), from the SAE's feature_stats.safetensors (``steering
    sae-stats``, or Neuronpedia's maxActApprox); none when the SAE has none."""
    try:
        sae = service.sae_for(row.ref)
        sae.check_feature(row.feature)
    except SteeringError:
        return ()
    facts = []
    if sae.max_activation is not None:
        facts.append(f"max activation {float(sae.max_activation[row.feature]):.3g}")
    if sae.frequency is not None:
        facts.append(f"fires on {100 * float(sae.frequency[row.feature]):.2g}% of tokens")
    if sae.mean_activation is not None and float(sae.mean_activation[row.feature]) > 0:
        facts.append(f"mean {float(sae.mean_activation[row.feature]):.3g} when active")
    return tuple(facts)


def card_html(
    row: FeatureRow,
    contexts: Sequence[FeatureContext] = (),
    neighbours: Sequence[Neighbour] = (),
    statistics: Sequence[str] = (),
) -> str:
    """The card's head as HTML: the label, then "#index · SAE · mode, unit", then the
    feature's ``statistics`` (``feature_statistics``), up to a few top activating contexts with
    the token highlighted, then the nearest features by decoder direction (index, label,
    cosine)."""
    unit = "× max activation" if row.unit == "max_act" else "raw units"
    how = MODES.get(row.mode, row.mode) + ("" if row.mode == "ablate" else f", in {unit}")
    parts = [
        '<div class="feature-head">',
        f'<div class="feature-label">{escape(row.label)}</div>',
        f'<div class="feature-meta">#{row.feature} · SAE <code>{escape(row.ref)}</code>'
        f" · {escape(how)}</div>",
    ]
    if statistics:
        shown = " · ".join(escape(fact) for fact in statistics)
        parts.append(f'<div class="feature-meta feature-stats">{shown}</div>')
    if contexts:
        items = "".join(f"<li>{_context(c)}</li>" for c in contexts)
        parts.append(
            '<div class="feature-meta">Fires most on:</div>'
            f'<ul class="feature-contexts">{items}</ul>'
        )
    if neighbours:
        items = "".join(f"<li>{_neighbour(n)}</li>" for n in neighbours)
        parts.append(
            '<div class="feature-meta">Nearest by decoder direction (cosine):</div>'
            f'<ul class="feature-neighbours">{items}</ul>'
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


def _neighbour(n: Neighbour) -> str:
    label = n.label or ""
    if len(label) > NEIGHBOUR_LABEL_CHARS:
        label = label[: NEIGHBOUR_LABEL_CHARS - 1] + "…"
    named = f" {escape(label)}" if label else ""
    return f'#{n.index}{named} <span class="feature-meta">({n.cosine:.2f})</span>'


def _runs_together(first: str, second: str) -> bool:
    """Whether ``first`` ends and ``second`` starts with a Latin letter or digit."""
    return bool(first and second) and all(
        c.isascii() and c.isalnum() for c in (first[-1], second[0])
    )
