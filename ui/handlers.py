"""What the page's events do. Each handler takes and returns plain values, so it is testable
without a browser; ``ui.app`` wires them to components."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from steering.serve import (
    Busy,
    EventStream,
    Preset,
    SamplingParams,
    Service,
    SteeringError,
    dump_preset,
    flatten_content,
)

from .features import (
    FeatureRow,
    decode_share,
    encode_share,
    new_row,
    preset_from_rows,
    rows_from_network,
    rows_from_preset,
)

NO_PRESET = "(none)"
STREAM_EVERY_S = 0.05  # browsers need no more than ~20 updates a second
FAILED = " *(this reply could not be finished; please try again)*"
BUSY = "The demo is busy right now: too many people are chatting. Please try again in a moment."
Chat = list[dict[str, Any]]


Rows = list[FeatureRow]


class Handlers:
    """The page's event handlers over one ``Service`` (plain values in, plain values out)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.running: dict[str, EventStream] = {}  # session -> its generation, for Stop
        self.lock = threading.Lock()

    # ---- steering ----

    def default_preset(self) -> str:
        names = list(self.service.presets)
        golden = [n for n in names if "golden gate" in n.lower()]
        return (golden or names or [NO_PRESET])[0]

    def preset_rows(self, name: str) -> Rows:
        if not name or name == NO_PRESET:
            return []
        return rows_from_preset(self.service.preset(name).preset)

    def pick_preset(self, name: str, layout: dict) -> tuple[Rows, dict, str]:
        rows = self.preset_rows(name)
        return rows, relayout(layout, rows), f"Preset **{name}** loaded."

    def set_value(self, rows: Rows, index: int, key: str, value: Any) -> Rows:
        if index >= len(rows):
            return rows
        return [
            dataclasses.replace(row, **{key: value}) if i == index else row
            for i, row in enumerate(rows)
        ]

    def remove(self, rows: Rows, layout: dict, index: int) -> tuple[Rows, dict]:
        rows = [row for i, row in enumerate(rows) if i != index]
        return rows, relayout(layout, rows)

    def add(self, choice: str | None, rows: Rows, layout: dict) -> tuple[Rows, dict, str]:
        """Add the feature picked in the search box (``ref#index``, or an index typed by hand)."""
        try:
            ref, feature = self.parse_choice(choice or "")
            row = new_row(self.service, ref, feature)
        except (SteeringError, ValueError) as e:
            return rows, layout, f"Cannot add that feature: {e}"
        if any((r.ref, r.feature) == (ref, feature) for r in rows):
            return rows, layout, f"Feature {feature} is already in the steering."
        rows = [*rows, row]
        return rows, relayout(layout, rows), f"Added **{row.label}**: move its slider."

    def parse_choice(self, choice: str) -> tuple[str, int]:
        """``ref#index`` from the label search, or an index typed by hand (first SAE)."""
        ref, sep, index = choice.strip().rpartition("#")
        if not sep:
            ref = next(iter(self.service.saes), "")
        if not index.strip().isdigit():
            raise ValueError(f"{choice!r} is neither a label from the list nor a feature index")
        return ref, int(index)

    def feature_choices(self, limit: int = 20_000) -> list[tuple[str, str]]:
        several = len(self.service.saes) > 1
        choices = []
        for n, (ref, sae) in enumerate(self.service.saes.items()):
            prefix = f"[SAE {n}] " if several else ""
            for index, label in sorted(sae.labels.items())[:limit]:
                choices.append((f"{prefix}{label} (#{index})", f"{ref}#{index}"))
        return choices

    def exports(self, rows: Rows) -> tuple[str, str, str]:
        """The preset file's text (the browser downloads it: nothing is written on the
        server), the share code, and a summary of what is active."""
        try:
            preset = preset_from_rows(self.service, rows)
        except SteeringError as e:
            return "", "", f"This steering cannot be saved: {e}"
        active = sum(row.active for row in rows)
        summary = f"{active} active feature{'s' * (active != 1)}."
        if preset is None:
            return "", "", summary + " Replies are unsteered."
        return dump_preset(preset), encode_share(preset), summary

    def upload(self, path: str | None, layout: dict, rows: Rows) -> tuple:
        """Rows from an uploaded preset file, read once within the upload limit."""
        if not path:
            return rows, layout, "No file received."
        try:
            with Path(path).open("rb") as f:
                data = f.read(self.service.limits.max_upload_bytes + 1)
            new = rows_from_network(self.service, data)
        except (SteeringError, OSError) as e:
            return rows, layout, f"**That preset file cannot be used:**\n\n```\n{e}\n```"
        return new, relayout(layout, new), f"Preset file loaded: {len(new)} features."

    def load(self, layout: dict, request: gr.Request) -> tuple:
        """A share link's steering (``?steering=...``), else the default preset."""
        code = dict(request.query_params).get("steering") if request else None
        if not code:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            rows = rows_from_network(self.service, decode_share(code))
        except (SteeringError, ValueError) as e:
            message = f"**The share link's steering cannot be used:**\n\n```\n{e}\n```"
            return gr.skip(), gr.skip(), gr.skip(), message
        note = f"Steering from the share link: {len(rows)} features."
        return rows, relayout(layout, rows), NO_PRESET, note

    # ---- chatting ----

    def respond(
        self,
        message: str,
        steered: Chat,
        baseline: Chat,
        rows: Rows,
        temperature: float,
        top_p: float,
        max_tokens: float,
        seed: float | None,
        request: gr.Request,
    ) -> Iterator[tuple[str, Chat, Chat]]:
        """One A/B generation; both panes stream from the same compare request."""
        if not message or not message.strip():
            return
        steered, baseline = plain(steered), plain(baseline)
        user = {"role": "user", "content": message}
        sampling = SamplingParams(
            temperature=float(temperature),
            top_p=float(top_p),
            max_new_tokens=int(max_tokens),
            seed=None if seed is None or seed < 0 else int(seed),
        )
        handle = self.submit(rows, [*steered, user], [*baseline, user], sampling)
        steered += [user, {"role": "assistant", "content": ""}]
        baseline += [user, {"role": "assistant", "content": ""}]
        yield "", steered, baseline
        yield from self.stream(handle, steered, baseline, session(request))

    def submit(
        self, rows: Rows, steered: Chat, baseline: Chat, sampling: SamplingParams
    ) -> EventStream:
        """Queue the A/B request; every problem becomes a message for the visitor."""
        try:
            plan, warnings = self.service.plan(self.preset(rows))
            handle = self.service.submit(
                steered, plan, sampling, compare=True, baseline_messages=baseline
            )
        except Busy:
            raise gr.Error(BUSY) from None
        except SteeringError as e:
            raise gr.Error(str(e)) from None
        for warning in warnings:
            gr.Warning(warning)
        return handle

    def preset(self, rows: Rows) -> Preset | None:
        return preset_from_rows(self.service, rows)

    def stream(
        self, handle: EventStream, steered: Chat, baseline: Chat, key: str
    ) -> Iterator[tuple[str, Chat, Chat]]:
        """Stream both rows' text into the two panes (about 20 updates a second); leaving the
        loop, for whatever reason, cancels the request."""
        with self.lock:
            self.running[key] = handle
        shown = time.monotonic()
        try:
            for event in handle:
                chat = steered if event.row == 0 else baseline
                chat[-1]["content"] += event.delta
                if event.finish_reason == "error":
                    chat[-1]["content"] += FAILED
                if time.monotonic() - shown >= STREAM_EVERY_S or event.finish_reason:
                    shown = time.monotonic()
                    yield "", steered, baseline
        finally:  # stop, a closed tab or an error: free the rows at once
            handle.cancel()
            with self.lock:
                if self.running.get(key) is handle:
                    del self.running[key]

    def stop(self, request: gr.Request) -> None:
        with self.lock:
            handle = self.running.pop(session(request), None)
        if handle is not None:
            handle.cancel()

    def undo_last(self, steered: Chat, baseline: Chat) -> tuple[str, Chat, Chat]:
        """For regenerate: drop the last exchange from both panes and resend its message."""
        steered, baseline = plain(steered), plain(baseline)
        users = [i for i, m in enumerate(steered) if m["role"] == "user"]
        if not users:
            return "", steered, baseline
        last = users[-1]
        return steered[last]["content"], steered[:last], baseline[:last]


def relayout(layout: dict, rows: Rows) -> dict:
    """A new slider layout: the revision makes every slider re-render with its new value."""
    return {"rev": layout.get("rev", 0) + 1, "rows": rows}


def plain(chat: Chat | None) -> Chat:
    """Gradio hands histories back with content as a list of blocks; the engine wants text."""
    return [{"role": m["role"], "content": flatten_content(m.get("content"))} for m in chat or []]


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"
