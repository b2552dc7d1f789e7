"""What lights up: for the last reply of each pane, how strongly the steered features fire at
each token, and each token's top features, with one click to add one to the steering.

The activations are the unsteered model's, at the SAE's hook point (``Service.activations``,
run on the engine's thread between steps), read on the last exchange alone (the visitor's
message and the reply): bounded, whatever the conversation's length. A token's shade is the
strongest steered feature's activation as a fraction of its max activation (of the strongest
activation in view when the SAE has no statistics); with no steered feature of the SAE, its
own strongest feature's. The visitor's message is shown too, dimmed: a prompt-side steering
clamps features there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from steering.serve import Busy, Service, SteeringError, TokenActivations

from .conversation import PANES
from .escaping import text
from .features import FeatureRow
from .handlers import FAILED, STOPPED, Handlers, Refused
from .messages import BUSY, for_visitor

TOP_K = 5  # features listed per token
MAX_CHOICE_CHARS = 300  # an "Add" from the browser: a reference and an index
PANE_TITLES = {"steered": "Steered reply", "baseline": "Baseline reply"}
SHOWN_PROMPT_TOKENS = 64  # the prompt's last tokens shown: the page stays small for long ones
SHADE = "250, 204, 21"  # the highlight's colour (RGB), its alpha the intensity


@dataclass(frozen=True)
class FeatureView:
    """One of a token's top features: its index, label, activation (raw SAE units) and that
    as a fraction of its max activation (None when the SAE has no statistics)."""

    feature: int
    label: str
    activation: float
    fraction: float | None


@dataclass(frozen=True)
class TokenView:
    """One token as the view shows it: its text, whether it is in the prompt, its shade in
    0..1, the steered feature that sets it (None when none fires) and its top features."""

    position: int  # in the activations' tokens
    text: str
    prompt: bool
    intensity: float
    strongest: FeatureView | None
    top: tuple[FeatureView, ...]


@dataclass(frozen=True)
class PaneView:
    """A pane's last exchange: the SAE read, the steered features, and the tokens."""

    pane: str
    ref: str
    steered: tuple[int, ...]
    tokens: tuple[TokenView, ...]
    activations: TokenActivations


def last_exchange(chat: Sequence[dict]) -> list[dict] | None:
    """The last user message and the reply to it (its stop or failure mark removed), or None
    when the pane has no reply yet."""
    if len(chat) < 2 or chat[-1].get("role") != "assistant" or chat[-2].get("role") != "user":
        return None
    reply = str(chat[-1].get("content") or "")
    for mark in (STOPPED, FAILED):
        reply = reply.removesuffix(mark)
    if not reply.strip():
        return None
    return [
        {"role": "user", "content": str(chat[-2].get("content") or "")},
        {
            "role": "assistant",
            "content": reply,
        },
    ]


def steered_features(service: Service, rows: Sequence[FeatureRow]) -> tuple[str, tuple[int, ...]]:
    """The SAE to read (that of the first active feature, else of the first feature, else the
    server's first) and the steering's features of that SAE, at most ``max_edits``."""
    active = [row for row in rows if row.active] or list(rows)
    if not active:
        ref, _ = service.offered_sae()
        return ref, ()
    ref = active[0].ref
    features = dict.fromkeys(row.feature for row in active if row.ref == ref)
    return ref, tuple(features)[: service.limits.max_edits]


class Lights:
    """The view's handlers over the page's ``Handlers`` (plain values in and out)."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.service: Service = handlers.service

    def label(self, ref: str, feature: int) -> str:
        """A preset's name for the feature, else its SAE's label, else "feature N"."""
        named = self.handlers.labels.get((ref, feature))
        if named:
            return named
        try:
            return self.service.sae_for(ref).labels.get(feature) or f"feature {feature}"
        except SteeringError:
            return f"feature {feature}"

    def read(self, conversation: Any, rows: Any) -> list[PaneView]:
        """Both panes' last exchanges as views; ``Refused`` with what to tell the visitor."""
        conversation = conversation if isinstance(conversation, dict) else {}
        rows = [r for r in rows if isinstance(r, FeatureRow)] if isinstance(rows, list) else []
        exchanges = {pane: last_exchange(conversation.get(pane) or []) for pane in PANES}
        if not any(exchanges.values()):
            raise Refused("There is no reply yet: send a message first.")
        try:
            ref, steered = steered_features(self.service, rows)
            views = []
            for pane, messages in exchanges.items():
                if messages is None:
                    continue
                found = self.service.activations(messages, ref, features=steered, top_k=TOP_K)
                views.append(self.pane_view(pane, ref, steered, found))
        except Busy:
            raise Refused(BUSY) from None
        except SteeringError as e:
            raise Refused(f"Cannot show what lights up: {for_visitor(e)}") from None
        return views

    def pane_view(
        self, pane: str, ref: str, steered: tuple[int, ...], found: TokenActivations
    ) -> PaneView:
        """The tokens of ``found`` with their shades and top features (see the module)."""
        start = found.reply_start if found.reply_start is not None else 0
        maxima = found.max_activation
        # Without statistics a feature's fraction is of its strongest activation in view.
        in_view = {f: max(found.features[f], default=0.0) for f in steered}
        if not steered:
            for row in found.top:
                for f, value in row[:1]:
                    in_view[f] = max(in_view.get(f, 0.0), value)

        def fraction(feature: int, value: float) -> float | None:
            most = maxima.get(feature) or in_view.get(feature)
            return min(1.0, max(0.0, value / most)) if most and most > 0 else None

        tokens = []
        for t, token in enumerate(found.tokens):
            top = tuple(
                FeatureView(f, self.label(ref, f), v, fraction(f, v)) for f, v in found.top[t]
            )
            if steered:
                fired = [(f, found.features[f][t]) for f in steered if found.features[f][t] > 0]
            else:
                fired = list(found.top[t][:1])
            shades = [FeatureView(f, self.label(ref, f), v, fraction(f, v)) for f, v in fired]
            strongest = max(shades, key=lambda s: s.fraction or 0.0, default=None)
            intensity = (strongest.fraction or 0.0) if strongest else 0.0
            tokens.append(TokenView(t, token, t < start, intensity, strongest, top))
        return PaneView(pane, ref, steered, tuple(tokens), found)

    def show(self, conversation: Any, rows: Any) -> tuple[str, str]:
        """Returns (the view's HTML, notice)."""
        try:
            views = self.read(conversation, rows)
        except Refused as e:
            return "", str(e)
        rows = rows if isinstance(rows, list) else []
        have = {(row.ref, row.feature) for row in rows if isinstance(row, FeatureRow)}
        return lights_html(views, have), ""

    def add(self, rows: Any, layout: Any, event: gr.EventData) -> tuple:
        """An "Add" clicked in the view: the feature goes into the steering exactly as the
        steering column's search box adds one (``Handlers.add``). Returns (rows, layout,
        status, preset box, this view's notice)."""
        data = getattr(event, "_data", None)
        choice = data.get("value") if isinstance(data, dict) else None
        if not isinstance(choice, str) or len(choice) > MAX_CHOICE_CHARS:
            choice = ""
        rows = rows if isinstance(rows, list) else []
        layout = layout if isinstance(layout, dict) else {"rev": 0, "rows": rows}
        new_rows, new_layout, status, preset = self.handlers.add(choice, rows, layout)
        return new_rows, new_layout, status, preset, status


def lights_html(views: Sequence[PaneView], have: set[tuple[str, int]] = frozenset()) -> str:
    """The view as HTML: per pane, the tokens (the prompt's last ``SHOWN_PROMPT_TOKENS``,
    dimmed, then the reply's) as buttons shaded by intensity, each with a tooltip and a
    details panel (shown on click) that lists its top features with an "Add" button; ``have``
    are the features already in the steering."""
    parts = ['<div class="lights" data-state="done">']
    if views:
        steered = views[0].steered
        if not steered:
            what = "each token's strongest feature fires, as a fraction of its max activation"
            what += " (no feature of this SAE is steered)"
        elif len(steered) == 1:
            what = f"the steered feature #{steered[0]} fires, as a fraction of its max activation"
        else:
            listed = ", ".join(f"#{f}" for f in steered)
            what = f"the steered features {listed} fire, as a fraction of their max activation"
        parts.append(
            f'<p class="lights-legend">Shade: how strongly {text(what)}; read on the unsteered '
            f"model with the SAE <code>{text(views[0].ref)}</code>, your message dimmed. Click "
            "a token for its top features.</p>"
        )
    for view in views:
        parts.append(
            f'<section class="lights-pane" data-pane="{text(view.pane)}">'
            f"<h4>{text(PANE_TITLES.get(view.pane, view.pane))}</h4>"
            '<div class="lights-tokens">'
        )
        prompt = [t for t in view.tokens if t.prompt]
        cut = max(0, len(prompt) - SHOWN_PROMPT_TOKENS)
        shown = view.tokens[cut:]
        if cut:
            parts.append(f'<span class="lit-cut" title="{cut} earlier tokens">… </span>')
        parts.extend(_token(view, token) for token in shown)
        parts.append('</div><div class="lights-details" aria-live="polite">')
        parts.extend(_details(view, token, have) for token in shown)
        parts.append("</div></section>")
    parts.append("</div>")
    return "".join(parts)


def _fraction(feature: FeatureView) -> str:
    if feature.fraction is None:
        return f"{feature.activation:.2f}"
    return f"{feature.activation:.2f} ({feature.fraction:.0%} of max)"


def _token(view: PaneView, token: TokenView) -> str:
    alpha = round(0.85 * token.intensity, 3)
    tip = [repr(token.text)]
    if token.strongest is not None:
        s = token.strongest
        tip.append(f"{s.label} #{s.feature}: {_fraction(s)}")
    tip.extend(f"top: {f.label} #{f.feature}: {_fraction(f)}" for f in token.top[:3])
    kind = "lit lit-prompt" if token.prompt else "lit"
    return (
        f'<button type="button" class="{kind}" data-t="{token.position}" '
        f'data-intensity="{token.intensity:.3f}" aria-pressed="false" '
        f'style="background-color: rgba({SHADE}, {alpha})" title="{text(chr(10).join(tip))}">'
        f"{text(token.text) or '·'}</button>"
    )


def _details(view: PaneView, token: TokenView, have: set[tuple[str, int]]) -> str:
    items = []
    for f in token.top:
        if (view.ref, f.feature) in have:
            action = '<span class="lit-have">in the steering</span>'
        else:
            action = (
                f'<button type="button" class="lit-add" data-choice="{text(view.ref)}'
                f'#{f.feature}">Add</button>'
            )
        items.append(
            f'<li data-feature="{f.feature}"><b>{text(f.label)}</b> (#{f.feature}) '
            f"{text(_fraction(f))} {action}</li>"
        )
    body = f"<ul>{''.join(items)}</ul>" if items else "<p>No feature fires here.</p>"
    return (
        f'<div class="lit-detail" data-t="{token.position}" hidden>'
        f"<p>Top features of <code>{text(repr(token.text))}</code>:</p>{body}</div>"
    )


CSS = """
.lights-legend { font-size: 0.85em; opacity: 0.85; margin: 0 0 6px 0; }
.lights-pane h4 { margin: 6px 0 4px 0; }
.lights-tokens { line-height: 1.9; overflow-wrap: anywhere; }
.lit { font: inherit; color: inherit; border: 0; box-shadow: none; background-image: none;
  margin: 0; padding: 1px 0; border-radius: 3px; white-space: pre-wrap; cursor: pointer; }
.lit-prompt, .lit-cut { opacity: 0.55; font-size: 0.9em; }
.lit[aria-pressed=true] { outline: 2px solid #2563eb; }
.lit-detail { margin-top: 6px; padding: 6px 8px; border-radius: 6px;
  border: 1px solid var(--border-color-primary, #ddd); }
.lit-detail ul { margin: 0; padding-left: 1.1em; }
.lit-detail li { margin: 2px 0; }
.lit-add { margin-left: 6px; padding: 0 8px; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--border-color-primary, #bbb); }
.lit-have { margin-left: 6px; font-size: 0.85em; opacity: 0.7; }
"""

# A token click shows its details (in the browser); an "Add" click sends the feature's
# ``ref#index`` to the server as a select event. Listeners sit on the component's root, so
# they keep working when the view's HTML is replaced.
ON_LOAD = """
element.addEventListener('click', (e) => {
  const add = e.target.closest('.lit-add');
  if (add) {
    add.disabled = true;  // one click adds once; the view's notice says what happened
    trigger('select', {index: 0, value: add.dataset.choice});
    return;
  }
  const token = e.target.closest('.lit');
  if (!token) return;
  const pane = token.closest('.lights-pane');
  const shown = token.dataset.t;
  pane.querySelectorAll('.lit-detail').forEach((d) => { d.hidden = d.dataset.t !== shown; });
  pane.querySelectorAll('.lit').forEach((b) => b.setAttribute('aria-pressed', String(b === token)));
});
"""


def lights_view(h: Handlers, parts: dict[str, Any]) -> None:
    """The view's section: a button that reads the last reply of both panes, and the view,
    whose "Add" buttons add to the page's steering."""
    lights = Lights(h)
    with gr.Accordion(
        "What lights up: the features at each token of the last reply",
        open=False,
        elem_id="lights-section",
    ):
        go = gr.Button("What lights up?", elem_id="lights-go", size="sm")
        notice = gr.Markdown("", elem_id="lights-notice")
        view = gr.HTML("", elem_id="lights", css_template=CSS, js_on_load=ON_LOAD)
    go.click(
        lights.show,
        [parts["chats"], parts["rows"]],
        [view, notice],
        api_name="lights",
        api_visibility="private",
        concurrency_id="model",
        concurrency_limit=None,
    )
    steering_out = [parts["rows"], parts["layout"], parts["status"], parts["preset"]]
    view.select(
        lights.add,
        [parts["rows"], parts["layout"]],
        [*steering_out, notice],
        api_name="lights_add",
        api_visibility="private",
    )
