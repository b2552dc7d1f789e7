"""A strength sweep on the page: one prompt, one feature of the steering at several multipliers
of its strength, as the rows of ONE request (``Service.sweep``: the rows share the sampling
settings and the random numbers), streamed into cards side by side, so a visitor sees where the
effect starts and where the text breaks.

The sweep of a feature is the steering restricted to that feature's row (its mode, scope and
unit as on its card) with the strength times each multiplier; 0 is the unsteered reply.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from steering.serve import Busy, EventStream, Limits, Preset, Service, SteeringError

from .conversation import empty, message_problem
from .escaping import text
from .features import FeatureRow, preset_from_rows, scope_name
from .handlers import STREAM_EVERY_S, Handlers, Refused, sampling_params, session
from .messages import BUSY, for_visitor

DEFAULT_MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
MAX_MULTIPLIER_CHARS = 200  # the multipliers box: far more than max_sweep_rows numbers need
SEPARATORS = re.compile(r"[,;\s]+")
SHOWN_VALUE_CHARS = 24  # a bad value is quoted at most this long
UNITS = {"max_act": "× max activation", "raw": "raw units"}
MODES = {"clamp": "clamped at", "add": "plus"}


@dataclass
class SweepRow:
    """One card: a multiplier and the reply its row has so far (``finish``: the row's finish
    reason once it ended: "stop", "length", "cancelled" or "error")."""

    multiplier: float
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    request_id: int | None = None


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: the feature's row, the multipliers, the prompt, and the steering."""

    row: FeatureRow
    multipliers: tuple[float, ...]
    prompt: str
    steering: Preset


def max_rows(limits: Limits) -> int:
    """The most multipliers one sweep may have on this server (each is a row of the batch)."""
    return min(limits.max_sweep_rows, limits.max_batch)


def default_multipliers(limits: Limits, row: FeatureRow | None = None) -> str:
    """What the multipliers box starts with: where a clamp's effect starts, then where it
    saturates, within this server's row limit (and, for ``row``, its strength limit)."""
    bound = multiplier_bound(row, limits) if row is not None else None
    fit = [m for m in DEFAULT_MULTIPLIERS if bound is None or m <= bound]
    return ", ".join(f"{m:g}" for m in fit[: max_rows(limits)])


def multiplier_bound(row: FeatureRow, limits: Limits) -> float | None:
    """The largest |multiplier| this server takes for ``row`` (its strength times the
    multiplier stays within ``max_multiple`` or ``max_raw``); None for an ablation."""
    if row.mode == "ablate" or not row.value:
        return None
    limit = limits.max_multiple if row.unit == "max_act" else limits.max_raw
    return limit / abs(row.value)


def parse_multipliers(typed: Any, row: FeatureRow, limits: Limits) -> tuple[float, ...]:
    """The multipliers typed as "0, 0.5, 1, 2, 4" (commas or spaces; a trailing "x" is fine).

    Raises ``ValueError`` with a sentence for the visitor naming the bad value and what is
    valid: not a number, more than ``max_rows`` values, or a strength over the server's limit."""
    most = max_rows(limits)
    bound = multiplier_bound(row, limits)
    valid = f"at most {most}" + (f", each between {-bound:g} and {bound:g}" if bound else "")
    example = f"give multipliers such as {default_multipliers(limits)} ({valid})"
    typed = typed if isinstance(typed, str) else ""
    if len(typed) > MAX_MULTIPLIER_CHARS:
        raise ValueError(
            f"The multipliers are {len(typed):,} characters; at most {MAX_MULTIPLIER_CHARS}: "
            f"{example}."
        )
    words = [w for w in SEPARATORS.split(typed.strip()) if w]
    if not words:
        raise ValueError(f"No multipliers: {example}.")
    values = []
    for word in words:
        number = word.removesuffix("x").removesuffix("×")
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"“{_shown(word)}” is not a number: {example}.")
        if bound is not None and abs(value) > bound:
            unit = UNITS[row.unit]
            limit_name = "max_multiple" if row.unit == "max_act" else "max_raw"
            limit = limits.max_multiple if row.unit == "max_act" else limits.max_raw
            raise ValueError(
                f"“{_shown(word)}” is too large: #{row.feature} is at {row.value:g} {unit}, and "
                f"this server steers at most {limit:g} {unit} ({limit_name}), so multipliers "
                f"go from {-bound:g} to {bound:g}."
            )
        values.append(value)
    if len(values) > most:
        raise ValueError(
            f"{len(values)} multipliers; this server sweeps at most {most} at once "
            "(max_sweep_rows): remove some."
        )
    return tuple(values)


def _shown(word: str) -> str:
    return word if len(word) <= SHOWN_VALUE_CHARS else word[: SHOWN_VALUE_CHARS - 1] + "…"


def feature_choice(row: FeatureRow) -> str:
    """The feature box's value for ``row``: ``ref#index``."""
    return f"{row.ref}#{row.feature}"


class Sweep:
    """The sweep's handlers over the page's ``Handlers`` (plain values in and out)."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.service: Service = handlers.service
        self.running: dict[str, EventStream] = {}  # session -> its sweep, for Stop
        self.lock = threading.Lock()

    # ---- the feature box ----

    @staticmethod
    def choices(rows: list[FeatureRow] | None) -> list[tuple[str, str]]:
        """The steering's features as (what the box shows, ``ref#index``)."""
        return [(f"{row.label} (#{row.feature})", feature_choice(row)) for row in rows or []]

    @staticmethod
    def default_choice(rows: list[FeatureRow] | None) -> str | None:
        """The first active feature, else the first feature, else None."""
        rows = rows or []
        first = next((row for row in rows if row.active), rows[0] if rows else None)
        return feature_choice(first) if first is not None else None

    def feature_box(self, rows: list[FeatureRow] | None, current: Any) -> Any:
        """The feature box after the steering changed: its choices, and its value kept when
        that feature is still in the steering."""
        choices = self.choices(rows)
        keep = current if any(value == current for _, value in choices) else None
        return gr.update(choices=choices, value=keep or self.default_choice(rows))

    # ---- running a sweep ----

    def check(
        self, choice: Any, multipliers: Any, prompt: Any, message: Any, rows: Any
    ) -> SweepPlan:
        """The sweep the visitor asked for; ``Refused`` with what to tell them otherwise.
        The prompt is the sweep's box, else the message box, else a suggested prompt."""
        rows = rows if isinstance(rows, list) else []
        row = next((r for r in rows if feature_choice(r) == choice), None)
        if row is None:
            raise Refused(
                "Pick one of the steering's features to sweep (add one under **Steering**)."
                if rows
                else "There is no feature to sweep: add one under **Steering** first."
            )
        if row.mode != "ablate" and not row.value:
            raise Refused(
                f"**{row.label}** (#{row.feature}) has strength 0, and the sweep multiplies "
                "its strength: set one on its card first."
            )
        try:
            scales = parse_multipliers(multipliers, row, self.service.limits)
        except ValueError as e:
            raise Refused(str(e)) from None
        prompt = next(
            (p for p in (prompt, message) if isinstance(p, str) and p.strip()),
            next(iter(self.handlers.about.suggested_prompts), "Hello!"),
        )
        problem = message_problem(prompt, empty(), self.service.limits)
        if problem:
            raise Refused(problem.replace("Your message", "The prompt"))
        steering = preset_from_rows(self.service, [dataclasses.replace(row, on=True)])
        assert steering is not None  # an active row makes a preset
        return SweepPlan(row, scales, prompt, steering)

    def start(self, plan: SweepPlan, sampling: Any) -> EventStream:
        """Queue the sweep as one request; ``Refused`` with a visitor's sentence otherwise."""
        messages = [{"role": "user", "content": plan.prompt}]
        try:
            return self.service.sweep(messages, plan.steering, plan.multipliers, sampling)
        except Busy:
            raise Refused(BUSY) from None
        except SteeringError as e:
            said = for_visitor(e).replace("This conversation is", "The prompt is")
            raise Refused(said.replace(" Press **Clear** to start again, or", " Please")) from None

    def run(
        self,
        choice: Any,
        multipliers: Any,
        prompt: Any,
        message: Any,
        rows: Any,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        request: gr.Request,
    ) -> Iterator[tuple[Any, str]]:
        """Sweep: yields (cards HTML, notice), the cards as the rows stream in, up to each
        row's end; the last update's cards say ``data-state="done"``."""
        try:
            plan = self.check(choice, multipliers, prompt, message, rows)
            handle = self.start(plan, sampling_params(temperature, top_p, max_tokens, seed))
        except Refused as e:
            yield gr.skip(), str(e)
            return
        key = session(request)
        with self.lock:  # one sweep per visitor: a new one ends the last
            last, self.running[key] = self.running.get(key), handle
        if last is not None:
            last.cancel()
        try:
            for cards in stream(handle, plan.multipliers):
                yield cards_html(plan, cards), ""
            yield cards_html(plan, cards, done=True), ""
        finally:  # a closed tab or an error: free the rows at once
            handle.cancel()
            with self.lock:
                if self.running.get(key) is handle:
                    del self.running[key]

    def stop(self, request: gr.Request) -> None:
        """End the visitor's sweep: its rows end before the engine's next decode step, and
        the sweep's own event shows them marked as stopped."""
        with self.lock:
            handle = self.running.pop(session(request), None)
        if handle is not None:
            handle.cancel()


def stream(handle: EventStream, multipliers: tuple[float, ...]) -> Iterator[list[SweepRow]]:
    """The rows of a sweep as they grow (row ``i`` is ``multipliers[i]``), at most about 20
    updates a second; every event that is ready goes into one update."""
    cards = [SweepRow(m) for m in multipliers]
    yield cards
    for batch in handle.batches():
        for event in batch:
            card = cards[event.row]
            card.text += event.delta
            card.request_id = event.request_id
            if event.token_id is not None:
                card.token_ids.append(event.token_id)
            if event.finish_reason is not None:
                card.finish = event.finish_reason
        yield cards
        time.sleep(STREAM_EVERY_S)


def strength(row: FeatureRow, multiplier: float) -> str:
    """What a card's row does, e.g. "clamped at 4 × max activation"."""
    if row.mode == "ablate":
        return "ablated" if multiplier else "not steered"
    value = row.value * multiplier
    if not value:
        return "not steered"
    return f"{MODES.get(row.mode, row.mode)} {value:g} {UNITS.get(row.unit, row.unit)}"


MARKS = {"cancelled": "(stopped)", "error": "(this row could not be finished)"}


def cards_html(plan: SweepPlan, cards: list[SweepRow], done: bool = False) -> str:
    """The sweep as HTML: what was swept, then one card per multiplier ("0x (unsteered)",
    "2x", ...), each with its reply; every text escaped."""
    row = plan.row
    about = (
        f'<p class="sweep-about">“{text(plan.prompt)}” · <b>{text(row.label)}</b> '
        f"(#{row.feature}) · {text(strength(row, 1.0))} · steers {text(scope_name(row))}</p>"
    )
    items = []
    for i, card in enumerate(cards):
        head = f"{card.multiplier:g}x" + (" (unsteered)" if card.multiplier == 0 else "")
        mark = MARKS.get(card.finish or "")
        items.append(
            f'<section class="sweep-card" data-row="{i}" data-multiplier="{card.multiplier:g}">'
            f'<h4 class="sweep-head">{text(head)}</h4>'
            f'<div class="sweep-strength">{text(strength(row, card.multiplier))}</div>'
            f'<div class="sweep-text">{text(card.text)}</div>'
            + (f'<em class="sweep-mark">{text(mark)}</em>' if mark else "")
            + "</section>"
        )
    state = "done" if done else "running"
    return (
        f'<div class="sweep" data-state="{state}" data-rows="{len(cards)}">{about}'
        f'<div class="sweep-grid">{"".join(items)}</div></div>'
    )


CSS = """
.sweep-about { margin: 0 0 6px 0; font-size: 0.9em; opacity: 0.85; overflow-wrap: anywhere; }
.sweep-grid { display: grid; gap: 8px;
  grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
.sweep-card { border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px;
  padding: 8px 10px; min-width: 0; }
.sweep-head { margin: 0; font-size: 1.05em; }
.sweep-strength { font-size: 0.8em; opacity: 0.75; margin-bottom: 4px; }
.sweep-text { white-space: pre-wrap; overflow-wrap: anywhere; }
.sweep-mark { font-size: 0.85em; opacity: 0.8; }
@media (max-width: 480px) { .sweep-grid { grid-template-columns: 1fr 1fr; } }
"""


def sweep_view(h: Handlers, parts: dict[str, Any]) -> None:
    """The sweep's section: the feature, the multipliers, the prompt, Sweep and Stop, and the
    cards; wired to the page's steering (``rows``), message box and sampling controls."""
    sweep = Sweep(h)
    limits = h.service.limits
    rows = parts["rows"]
    first = rows.value or []
    with gr.Accordion(
        "Strength sweep: one prompt at several strengths, side by side",
        open=False,
        elem_id="sweep-section",
    ):
        gr.Markdown(
            "One request, one row per multiplier of a feature's strength, all with the same "
            "random numbers: the rows differ only where the strength changes what the model "
            "writes."
        )
        with gr.Row():
            feature = gr.Dropdown(
                sweep.choices(first),
                value=sweep.default_choice(first),
                label="Feature",
                elem_id="sweep-feature",
                scale=2,
                min_width=160,
            )
            chosen = next(
                (r for r in first if feature_choice(r) == sweep.default_choice(first)), None
            )
            multipliers = gr.Textbox(
                default_multipliers(limits, chosen),
                label=f"Multipliers of its strength (at most {max_rows(limits)})",
                elem_id="sweep-multipliers",
                max_lines=1,
                scale=2,
                min_width=160,
            )
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="Empty: the message box's text, else a suggested prompt",
            elem_id="sweep-prompt",
            max_lines=4,
        )
        with gr.Row():
            go = gr.Button("Sweep", variant="primary", elem_id="sweep-go", scale=0, min_width=90)
            stop = gr.Button("Stop", elem_id="sweep-stop", scale=0, min_width=90)
        notice = gr.Markdown("", elem_id="sweep-notice")
        cards = gr.HTML("", elem_id="sweep-cards", css_template=CSS, js_on_load=None)
    rows.change(
        sweep.feature_box,
        [rows, feature],
        feature,
        api_name="sweep_features",
        api_visibility="private",
    )
    inputs = [feature, multipliers, prompt, parts["msg"], rows, *parts["sampling"]]
    go.click(
        sweep.run,
        inputs,
        [cards, notice],
        api_name="sweep",
        api_visibility="private",
        concurrency_id="model",
        concurrency_limit=None,
    )
    stop.click(sweep.stop, None, None, api_name="sweep_stop", api_visibility="private")
