"""What the page's events do. Each handler takes and returns plain values, so it is testable
without a browser; ``ui.app`` wires them to components."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from steering.serve import (
    About,
    Busy,
    EventStream,
    Preset,
    PresetError,
    SamplingParams,
    Service,
    SteeringError,
    about,
    dump_preset,
    search_labels,
)

from .conversation import Chat, Conversation, copy, empty, message_problem, without_last_exchange
from .features import (
    SHARE_PARAM,
    FeatureRow,
    decode_share,
    encode_share,
    new_row,
    preset_from_rows,
    preset_labels,
    problems_text,
    quoted,
    rows_from_network,
    rows_from_preset,
    scope_of,
)
from .messages import BUSY, for_visitor, plural, without_paths

NO_PRESET = "(none)"
CUSTOM = "(custom)"  # the preset box once the steering is no longer a preset as shipped
STREAM_EVERY_S = 0.05  # browsers need no more than ~20 updates a second
FAILED = " *(this reply could not be finished; please try again)*"
STOPPED = " *(stopped)*"
UNUSABLE_FILE = "**That preset file cannot be used:**"
UNUSABLE_LINK = "**The share link's steering cannot be used:**"
RESUMED = {
    "restarted": "**The server restarted**, so this conversation was reset (a restart forgets "
    "every conversation).",
    "reloaded": "The page was reloaded, so the conversation starts again.",
}
STEERING_KEPT = " Your steering was kept."
FIRST_CHOICES = 2000  # the search box's choices before anything is typed (all of a small SAE's)
SEARCH_RESULTS = 50  # its choices per SAE for what is typed: the best matches
DRAFT_KEPT = " Your message is back in the box: press **Send** to send it."


Rows = list[FeatureRow]


class Handlers:
    """The page's event handlers over one ``Service`` (plain values in, plain values out)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.running: dict[str, EventStream] = {}  # session -> its generation, for Stop
        self.lock = threading.Lock()
        self.about: About = about(service)
        self.labels = preset_labels(service)

    # ---- steering ----

    def default_preset(self) -> str:
        names = list(self.service.presets)
        golden = [n for n in names if "golden gate" in n.lower()]
        return (golden or names or [NO_PRESET])[0]

    def preset_rows(self, name: str) -> Rows:
        if not name or name == NO_PRESET:
            return []
        entry = self.service.preset(name)
        return rows_from_preset(self.service, entry.preset, entry.base_dir)

    def pick_preset(self, name: str, layout: dict) -> tuple:
        """Returns (rows, layout, status, preset box)."""
        skip = gr.skip()
        if name == CUSTOM:  # the box's own marker: nothing to load
            return skip, skip, "", skip
        try:
            rows = self.preset_rows(name)
        except SteeringError:  # only a raw client names a preset the list does not offer
            return skip, skip, "There is no such preset: pick one from the list.", skip
        return rows, relayout(layout, rows), f"Preset **{name}** loaded.", skip

    @staticmethod
    def preset_box(rows: Rows) -> str:
        """The preset box once the visitor changed the steering's features."""
        return CUSTOM if rows else NO_PRESET

    def set_value(self, rows: Rows, index: int, key: str, value: Any) -> Rows:
        """A slider's strength (a finite number) or a switch (a bool); anything else a client
        sends leaves the steering as it is."""
        wanted = bool if key == "on" else (int, float)
        if index >= len(rows) or not isinstance(value, wanted):
            return rows
        if key == "value" and (isinstance(value, bool) or not math.isfinite(value)):
            return rows
        return [
            dataclasses.replace(row, **{key: value}) if i == index else row
            for i, row in enumerate(rows)
        ]

    def set_scope(self, rows: Rows, index: int, name: Any) -> Rows:
        """A card's scope, one of ``SCOPES`` by name; anything else changes nothing."""
        scope = scope_of(name) if isinstance(name, str) else None
        if index >= len(rows) or scope is None:
            return rows
        positions, skip = scope
        return [
            dataclasses.replace(row, positions=positions, skip_special_tokens=skip)
            if i == index
            else row
            for i, row in enumerate(rows)
        ]

    def remove(self, rows: Rows, layout: dict, index: int) -> tuple[Rows, dict, str, str]:
        """Returns (rows, layout, status, preset box)."""
        rows = [row for i, row in enumerate(rows) if i != index]
        return rows, relayout(layout, rows), "", self.preset_box(rows)

    def add(self, choice: str | None, rows: Rows, layout: dict) -> tuple:
        """Add the feature picked in the search box (``ref#index``, or an index typed by
        hand), at the strength and scope that suit its SAE. Returns (rows, layout, status,
        preset box)."""
        skip = gr.skip()
        try:
            ref, feature = self.parse_choice(choice or "")
        except ValueError as e:
            return rows, layout, f"Cannot add that feature: {e}.", skip
        problem = self.feature_problem(ref, feature)
        if problem:
            return rows, layout, f"Cannot add that feature: {problem}.", skip
        try:
            row = new_row(self.service, ref, feature, self.labels.get((ref, feature)))
        except SteeringError as e:
            return rows, layout, f"Cannot add that feature: {for_visitor(e)}", skip
        if any((r.ref, r.feature) == (ref, feature) for r in rows):
            return rows, layout, f"Feature #{feature} is already in the steering.", skip
        rows = [*rows, row]
        status = f"Added **{row.label}** (#{feature}); set its strength and scope on its card."
        return rows, relayout(layout, rows), status, CUSTOM

    def feature_problem(self, ref: str, feature: int) -> str | None:
        """Why ``ref#feature`` is not a feature of this server's SAEs, for a visitor."""
        sae = self.service.saes.get(ref)
        if sae is None:
            return f"this server has no such SAE; it has {', '.join(self.service.saes)}"
        size = sae.W_enc.shape[1]
        if not 0 <= feature < size:
            return f"there is no feature #{feature}: this SAE has features 0 to {size - 1:,}"
        return None

    def parse_choice(self, choice: str) -> tuple[str, int]:
        """``ref#index`` from the label search, or an index typed by hand (first SAE)."""
        ref, sep, index = choice.strip().rpartition("#")
        if not sep:
            ref = next(iter(self.service.saes), "")
        if not index.strip().isdigit():
            shown = choice.strip()[:60] + ("…" if len(choice.strip()) > 60 else "")
            raise ValueError(
                f"“{shown}” is neither a feature from the list nor a feature index: type a few "
                "letters of a label and pick from the list"
            )
        return ref, int(index)

    def feature_choices(self, query: str = "", limit: int | None = None) -> list[tuple[str, str]]:
        """The search box's choices, each "label (#index)" with a preset's name for the feature
        before the SAE's own label. With no ``query``: the features presets name, then the
        first labelled ones, ``limit`` of each SAE (the box matches what is typed anywhere in the
        text, in any case). With a ``query`` (what the visitor typed): the features presets
        name that it is part of, then each SAE's best ``SEARCH_RESULTS`` by ``search_labels``
        (ranked words of the labels; an index typed comes first)."""
        several = len(self.service.saes) > 1
        limit = FIRST_CHOICES if limit is None else limit
        choices = []
        for n, (ref, sae) in enumerate(self.service.saes.items()):
            prefix = f"[SAE {n}] " if several else ""
            named = {i: label for (r, i), label in self.labels.items() if r == ref}
            if query.strip():
                typed = query.strip().casefold()
                indices = [i for i, label in sorted(named.items()) if typed in label.casefold()]
                try:
                    found = search_labels(sae, query, min(limit, SEARCH_RESULTS))
                except SteeringError:  # too long, or an index past the end: nothing to show
                    found = []
                indices += [m.index for m in found if m.index not in indices]
            else:  # the features a preset names first: a person chose their labels
                indices = sorted(set(sae.labels) | set(named), key=lambda i: (i not in named, i))
            for index in indices[:limit]:
                words = [named.get(index), sae.labels.get(index)]
                unique: dict[str, str] = {}  # one of labels that differ only in case
                for word in words:
                    if word:
                        unique.setdefault(word.lower(), word)
                text = " · ".join(unique.values()) or "no label"
                choices.append((f"{prefix}{text} (#{index})", f"{ref}#{index}"))
        return choices

    def search_choices(self, typed: gr.KeyUpData) -> Any:
        """The search box's choices for what the visitor has typed so far (``feature_choices``),
        as they type; none to send while the box holds every labelled feature already (the
        browser filters those itself, and a list replaced under the pointer can lose a click)."""
        labelled = sum(len(sae.labels) for sae in self.service.saes.values()) + len(self.labels)
        if labelled <= FIRST_CHOICES:
            return gr.skip()
        text = typed.input_value if isinstance(typed.input_value, str) else ""
        return gr.update(choices=self.feature_choices(text))

    def exports(self, rows: Rows) -> tuple[str, str, str]:
        """The preset file's text (the browser downloads it: nothing is written on the
        server), the share code, and a summary of what is active."""
        try:
            preset = preset_from_rows(self.service, rows)
        except SteeringError as e:
            return "", "", f"This steering cannot be saved: {for_visitor(e)}"
        active = sum(row.active for row in rows)
        summary = f"{plural(active, 'active feature')}."
        if preset is None:
            return "", "", summary + " Replies are unsteered."
        return dump_preset(preset), encode_share(preset), summary

    def upload(self, name: Any, size: Any, text: Any, layout: dict, rows: Rows) -> tuple:
        """Rows from a preset file the browser read (its name, size in bytes and text): the
        file never reaches the server's disk, and its text is parsed once. Returns (rows,
        layout, status, preset box)."""
        skip = gr.skip()
        if not name and not text:  # the visitor closed the file chooser
            return skip, skip, skip, skip
        most = self.service.limits.max_upload_bytes
        if not isinstance(name, str) or not name.lower().endswith(".json"):
            return rows, layout, f"{UNUSABLE_FILE} pick a `.json` preset file.", skip
        declared = size if isinstance(size, (int, float)) and math.isfinite(size) else 0
        text = text if isinstance(text, str) else ""
        # A UTF-8 character has at most 4 bytes: far longer text is not even encoded.
        size = len(text.encode("utf-8", "replace")) if len(text) <= 4 * most else len(text)
        if max(declared, size) > most:
            got = int(max(declared, size))
            problem = (
                f"it has {got:,} bytes; a preset file has at most {most:,} (max_upload_bytes)."
            )
            return rows, layout, f"{UNUSABLE_FILE} {problem}", skip
        try:
            new = rows_from_network(self.service, text)
        except PresetError as e:
            problem = problems_text(e, "it is not a JSON preset file (it does not read as JSON).")
        except SteeringError as e:
            problem = quoted(for_visitor(e))
        else:
            status = f"Preset file loaded: {plural(len(new), 'feature')}."
            return new, relayout(layout, new), status, self.preset_box(new)
        return rows, layout, UNUSABLE_FILE + problem, skip

    def load(self, code: Any, draft: Any, kind: Any, layout: dict, request: gr.Request) -> tuple:
        """The page's steering when it loads, and what to tell the visitor. After a reload
        (``kind`` "reloaded" or "restarted") the page hands back what it kept: the steering's
        share ``code`` and the unsent message ``draft``. Otherwise a share link's steering
        (``?steering=...``) if there is one, else the default preset; any other query is
        ignored. Returns (rows, layout, status, preset, message box, notice)."""
        skip = gr.skip()
        if kind in RESUMED:
            draft = draft if isinstance(draft, str) and len(draft) <= self.max_chars else ""
            code = code if isinstance(code, str) else ""
            rows, problem = self.shared_rows(code) if code else ([], None)
            kept = DRAFT_KEPT if draft else ""
            if rows is None:
                return skip, skip, problem, skip, draft or skip, RESUMED[kind] + kept
            status = f"Steering kept: {plural(len(rows), 'feature')}."
            notice = RESUMED[kind] + STEERING_KEPT + kept
            preset = self.preset_box(rows)
            return rows, relayout(layout, rows), status, preset, draft or skip, notice
        params = request.query_params if request is not None else {}
        code = params.get(SHARE_PARAM) if hasattr(params, "get") else None
        if not code:
            return skip, skip, skip, skip, skip, skip
        rows, problem = self.shared_rows(code)
        if rows is None:
            return skip, skip, problem, skip, skip, skip
        note = f"Steering from the share link: {plural(len(rows), 'feature')}."
        return rows, relayout(layout, rows), note, self.preset_box(rows), skip, skip

    def shared_rows(self, code: str) -> tuple[Rows | None, str | None]:
        """The rows of a share code, or None and what to tell the visitor."""
        try:
            return rows_from_network(self.service, decode_share(code, self.service.limits)), None
        except ValueError as e:  # the code itself: too long, not base64url
            problem = f" {e}."
        except PresetError as e:
            problem = problems_text(e, "it does not hold a steering made by this page.")
        except SteeringError as e:
            problem = quoted(for_visitor(e))
        return None, UNUSABLE_LINK + problem

    @property
    def max_chars(self) -> int:
        return self.service.limits.max_message_chars

    # ---- chatting ----

    def respond(
        self,
        message: Any,
        conversation: Conversation,
        rows: Rows,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Send the visitor's message: one A/B generation, both panes streaming from the same
        compare request. Yields (message box, conversation, steered pane, baseline pane,
        notice). The message's size is checked before anything else is done with it."""
        if not isinstance(message, str) or not message.strip():
            return
        problem = message_problem(message, conversation or empty(), self.service.limits)
        if problem:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), problem
            return
        sampling = sampling_params(temperature, top_p, max_tokens, seed)
        yield from self.reply(message, conversation, rows, sampling, session(request))

    def regenerate(
        self,
        conversation: Conversation,
        rows: Rows,
        temperature: Any,
        top_p: Any,
        max_tokens: Any,
        seed: Any,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Drop the last exchange and answer its message again. Yields (conversation, steered
        pane, baseline pane, notice): the message box keeps whatever the visitor is typing."""
        message, before = without_last_exchange(conversation)
        if not message:
            return
        problem = message_problem(message, before, self.service.limits)
        if problem:
            yield gr.skip(), gr.skip(), gr.skip(), problem
            return
        sampling = sampling_params(temperature, top_p, max_tokens, seed)
        for update in self.reply(message, before, rows, sampling, session(request)):
            yield update[1:]

    def clear(self) -> tuple[str, Conversation, Chat, Chat, str]:
        """An empty message box, conversation, panes and notice."""
        return "", empty(), [], [], ""

    def reply(
        self,
        message: str,
        conversation: Conversation,
        rows: Rows,
        sampling: SamplingParams,
        key: str,
    ) -> Iterator[tuple[Any, Conversation, Chat, Chat, str]]:
        """Stream the reply to ``message`` after ``conversation`` into a copy of it. Yields
        (message box, conversation, steered pane, baseline pane, notice): the box empties once
        the message is on its way; a message the model cannot take stays in the box, and the
        notice says why."""
        conversation = copy(conversation)
        steered, baseline = conversation["steered"], conversation["baseline"]
        user = {"role": "user", "content": message}
        try:
            handle = self.submit(
                rows, [*for_model(steered), user], [*for_model(baseline), user], sampling
            )
        except Refused as e:
            skip = gr.skip()
            yield skip, skip, skip, skip, str(e)
            return
        steered += [user, {"role": "assistant", "content": ""}]
        baseline += [user, {"role": "assistant", "content": ""}]
        with self.lock:  # from now on Stop finds it
            self.running[key] = handle
        try:
            yield "", conversation, steered, baseline, ""
            for _ in self.stream(handle, steered, baseline):
                yield gr.skip(), conversation, steered, baseline, ""
        finally:  # a closed tab, Clear or an error: free the rows at once
            handle.cancel()
            with self.lock:
                if self.running.get(key) is handle:
                    del self.running[key]

    def submit(
        self, rows: Rows, steered: Chat, baseline: Chat, sampling: SamplingParams
    ) -> EventStream:
        """Queue the A/B request. A busy server is a ``gr.Error``; a request the model cannot
        take (too long for its context, steering over the limits) is ``Refused`` with a
        message for the visitor."""
        try:
            plan, warnings = self.service.plan(self.preset(rows))
            handle = self.service.submit(
                steered, plan, sampling, compare=True, baseline_messages=baseline
            )
        except Busy:
            raise gr.Error(BUSY) from None
        except SteeringError as e:
            raise Refused(for_visitor(e)) from None
        for warning in warnings:
            gr.Warning(without_paths(warning))
        return handle

    def preset(self, rows: Rows) -> Preset | None:
        return preset_from_rows(self.service, rows)

    def stream(self, handle: EventStream, steered: Chat, baseline: Chat) -> Iterator[None]:
        """Stream both rows' text into the two chats, at most about 20 updates a second, up
        to each row's final event (a stopped row's text ends with ``STOPPED``)."""
        for batch in handle.batches():
            for event in batch:
                chat = steered if event.row == 0 else baseline
                chat[-1]["content"] += event.delta
                if event.finish_reason == "error":
                    chat[-1]["content"] += FAILED
                elif event.finish_reason == "cancelled":  # Stop, or the server stopping
                    chat[-1]["content"] += STOPPED
            # Everything ready goes out in one update, so the page never falls behind the
            # engine however long an update takes to render; the pause caps the rate.
            yield
            time.sleep(STREAM_EVERY_S)

    def stop(self, request: gr.Request) -> None:
        """End the session's reply: the engine ends both rows before its next decode step,
        and the reply's own generator shows what was written, marked as stopped."""
        with self.lock:
            handle = self.running.pop(session(request), None)
        if handle is not None:
            handle.cancel()


def for_model(chat: Chat) -> Chat:
    """The history as the model wrote it: without the marks the page adds to a reply."""
    return [
        {**m, "content": m["content"].removesuffix(STOPPED).removesuffix(FAILED)}
        if m["role"] == "assistant"
        else m
        for m in chat
    ]


class Refused(Exception):
    """A request the model cannot take, with what to tell the visitor."""


def sampling_params(temperature: Any, top_p: Any, max_tokens: Any, seed: Any) -> SamplingParams:
    """The sampling controls' values as settings; ``gr.Error`` naming a value that is not a
    number (the ranges are checked when the request is built)."""
    values = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_tokens}
    try:
        numbers = {k: float(v) for k, v in values.items() if not isinstance(v, bool)}
        if len(numbers) < len(values) or not all(math.isfinite(v) for v in numbers.values()):
            raise ValueError
        seed_value = None if seed is None else float(seed)
        if seed_value is not None and not math.isfinite(seed_value):
            raise ValueError
    except (TypeError, ValueError):
        raise gr.Error(
            "The sampling settings must be finite numbers: temperature, top-p, max new "
            "tokens and seed."
        ) from None
    return SamplingParams(
        temperature=numbers["temperature"],
        top_p=numbers["top_p"],
        max_new_tokens=int(numbers["max_new_tokens"]),
        seed=None if seed_value is None or seed_value < 0 else int(seed_value),
    )


def relayout(layout: dict, rows: Rows) -> dict:
    """A new slider layout: the revision makes every slider re-render with its new value."""
    return {"rev": layout.get("rev", 0) + 1, "rows": rows}


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"
