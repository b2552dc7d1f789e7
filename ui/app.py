"""The demo page: steered and baseline chats side by side, streaming from one A/B generation.

The steering lives in two states: ``rows`` (the truth: every slider move writes there) and
``layout`` (the rows at the last structural change, with a revision number). Only ``layout``
re-renders the sliders, so moving a slider never rebuilds them. The conversation lives in a
third (``ui.conversation``): the chat panes are outputs only, so the server never reads a
history a client sends. Every event input is text, a number or a choice; a preset file is read
by the browser and sent as text, so nothing a visitor sends is ever stored as a file.

Each feature is a card (``ui.cards``) with its switch, scope and strength. While a reply
streams, the page marks itself busy (Stop in place of Send); Stop only cancels the request, so
the reply's own event ends it with what was written and a "(stopped)" mark, and then the page
counts the reply as done (``body[data-replies]``, what the browser tests wait for). More views
(``VIEWS``) go below the chat and the steering.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr

from steering.serve import Service

from . import conversation
from .cards import card_html, feature_statistics, nearest_features
from .features import SCOPES, FeatureRow, scope_name, slider_range, top_contexts
from .handlers import CUSTOM, NO_PRESET, Handlers
from .lights import lights_view
from .scripts import (
    ANSWERED_JS,
    CLEARED_JS,
    DOWNLOAD_JS,
    EMPTY_JS,
    FAILED_JS,
    HEAD,
    REGENERATE_JS,
    RESUME_JS,
    SEND_JS,
    SHARE_JS,
    TRACK_CODE_JS,
    UPLOAD_JS,
)
from .sweep import sweep_view

__all__ = ["CSS", "HEAD", "THEME", "build_page"]

CUSTOM_JS = f"() => {json.dumps(CUSTOM)}"  # the preset box once the visitor edits a card

THEME = gr.themes.Soft()
CSS = """
#header p { margin: 0.2em 0; }
/* the panes side by side from tablet width up, one above the other on a phone */
#panes { flex-wrap: nowrap; gap: 8px; }
#panes > div { min-width: 0 !important; flex: 1 1 0; }
@media (max-width: 767px) {
  #panes { flex-direction: column; }
  #panes > div { flex: none; }
  #main { flex-direction: column; }
}
@media (min-width: 768px) and (max-width: 899px) { #main { flex-direction: column; } }
#steered, #baseline { height: clamp(200px, calc(100vh - 420px), 460px) !important; }
@media (max-width: 767px) { #steered, #baseline { height: 30vh !important; } }
/* while a reply streams (#main.steering-busy): Stop instead of Send, no Regenerate */
#stop { display: none; }
#main.steering-busy #stop { display: inline-flex; }
#main.steering-busy #send { display: none; }
#main.steering-busy #regenerate { pointer-events: none; opacity: 0.5; }
#msg-row { flex-wrap: nowrap; align-items: stretch; }
#try { flex-wrap: wrap; gap: 6px; align-items: center; }
#try > .try-label { flex: 0 0 auto; min-width: 0 !important; width: auto; }
#try > button.try-chip { flex: 0 1 auto !important; width: auto !important; min-width: 0 !important;
  max-width: 100%; white-space: normal; }
#msg-row > button { min-width: 72px !important; flex: 0 0 auto; }
.feature-card { padding: 8px 10px; }
.feature-card .feature-head { min-width: 150px; }
.feature-label { font-weight: 600; font-size: 1.05em; overflow-wrap: anywhere; }
.feature-meta { font-size: 0.85em; opacity: 0.8; }
.feature-contexts { margin: 4px 0 0 0; padding-left: 1.1em; font-size: 0.85em; }
.feature-neighbours { margin: 4px 0 0 0; padding-left: 1.1em; font-size: 0.85em; }
.feature-contexts mark { background: #fde68a; color: #111; border-radius: 3px; padding: 0 2px; }
.feature-controls { flex-wrap: nowrap; align-items: center; gap: 6px; }
.feature-scope { min-width: 0 !important; flex: 1 1 auto; }
#share_link textarea { overflow-y: auto; word-break: break-all; }
"""
EXPLANATION = """
**What is steering?** A sparse autoencoder (SAE) splits the model's internal activations into
features that mean something to people, such as *the Golden Gate Bridge*. Steering clamps a
feature to a chosen strength while the model writes, and the model starts to see the world
through it ([Golden Gate Claude](https://www.anthropic.com/news/golden-gate-claude)). Both chats
below come from one generation with the same random numbers: only the steering differs.
A strength is a multiple of the feature's highest observed activation (× max) or raw units; a
feature's scope says which tokens it steers (a small model often writes better when only your
words are steered).
"""
# Views shown after the chat and steering, each a function (handlers, parts) -> None that
# builds its own gr.Accordion (or tab) and wires its own events; ``parts`` holds the page's
# components and states by name. A new view is one entry here.
VIEWS: list[Callable[[Handlers, dict[str, Any]], None]] = [sweep_view, lights_view]


def build_page(service: Service) -> gr.Blocks:
    """The page over ``service``: both chats, the steering column and the sampling controls."""
    h = Handlers(service)
    first_rows = h.preset_rows(h.default_preset())
    # The page writes no files; delete_cache still removes, hourly and at exit, any file
    # Gradio itself ever puts in its cache.
    with gr.Blocks(title="Steering: feature steering with SAEs", delete_cache=(3600, 3600)) as page:
        rows = gr.State(first_rows)
        layout = gr.State({"rev": 0, "rows": first_rows})
        chats = gr.State(conversation.empty())
        gr.Markdown(f"# Steering · `{service.model_id}`\n{h.about.line()}", elem_id="header")
        with gr.Accordion("What is steering?", open=False, elem_id="explain"):
            gr.Markdown(EXPLANATION)
        with gr.Row(elem_id="main"):
            with gr.Column(scale=3, min_width=0, elem_id="chat-column"):
                chat = _chat_column(h)
            with gr.Column(scale=2, min_width=0, elem_id="steering-column"):
                controls = _steering_column(h, service, rows, layout)
                sampling = _sampling_controls(service)
        _wire(page, h, rows, layout, chats, chat, controls, sampling)
        parts = {"rows": rows, "layout": layout, "chats": chats, **chat, **controls}
        parts["sampling"] = sampling
        for view in VIEWS:
            view(h, parts)
    return page


def _chat_column(h: Handlers) -> dict[str, Any]:
    with gr.Row(elem_id="panes", equal_height=True):
        steered = _chatbot("Steered", "steered")
        baseline = _chatbot("Baseline", "baseline")
    with gr.Row(elem_id="msg-row"):
        # No max_length: a browser would cut a long paste silently; the server says instead
        # which limit a message is over, and by how much.
        msg = gr.Textbox(
            show_label=False,
            placeholder=f"Say something… (up to {h.max_chars:,} characters)",
            elem_id="msg",
            scale=5,
            min_width=0,
            max_lines=6,
        )
        send = gr.Button("Send", variant="primary", elem_id="send", scale=0, min_width=72)
        stop = gr.Button("Stop", elem_id="stop", variant="stop", scale=0, min_width=72)
    notice = gr.Markdown("", elem_id="notice")
    with gr.Row():
        regen = gr.Button("Regenerate", elem_id="regenerate", size="sm")
        clear = gr.Button("Clear", elem_id="clear", size="sm")
    # Chips that fill the message box in the browser alone: gr.Examples would ask the server
    # through a route the page's guard does not open.
    with gr.Row(elem_id="try", elem_classes="try-chips"):
        gr.Markdown("**Try:**", elem_classes="try-label")
        for prompt in h.about.suggested_prompts:
            chip = gr.Button(prompt, size="sm", min_width=0, scale=0, elem_classes="try-chip")
            chip.click(None, None, msg, js=f"() => {json.dumps(prompt)}")
    return dict(
        steered=steered,
        baseline=baseline,
        msg=msg,
        notice=notice,
        send=send,
        stop=stop,
        regen=regen,
        clear=clear,
    )


def _chatbot(label: str, elem_id: str) -> gr.Chatbot:
    return gr.Chatbot(
        label=label, elem_id=elem_id, height=420, buttons=["copy", "copy_all"], min_width=0
    )


def _steering_column(
    h: Handlers, service: Service, rows: gr.State, layout: gr.State
) -> dict[str, Any]:
    gr.Markdown("### Steering")
    preset = gr.Dropdown(
        [NO_PRESET, *service.presets, CUSTOM],
        value=h.default_preset(),
        label="Preset",
        elem_id="preset",
    )
    late: dict[str, Any] = {}  # created below, used by the cards' remove buttons
    _render_sliders(h, service, rows, layout, late)
    with gr.Row():
        search = gr.Dropdown(
            h.feature_choices(),
            value=None,
            label="Add a feature: search its label (any word), or type an index",
            allow_custom_value=True,
            filterable=True,
            elem_id="search",
            scale=4,
        )
        add = gr.Button("Add", elem_id="add", scale=1, min_width=60)
    active = gr.Markdown("", elem_id="active")
    status = gr.Markdown("", elem_id="status")
    with gr.Row():
        download = gr.Button("Download preset", elem_id="download", size="sm")
        upload = gr.Button("Upload preset", elem_id="upload", size="sm")
        share = gr.Button("Share link", elem_id="share", size="sm")
    upload_file = [  # what the browser read: name, size in bytes, text
        gr.Textbox(visible=False, elem_id="upload_name"),
        gr.Number(visible=False, elem_id="upload_size"),
        gr.Textbox(visible=False, elem_id="upload_text"),
    ]
    share_code = gr.Textbox(visible=False, elem_id="share_code")
    resume = [  # what the page kept before a reload: share code, message, "restarted"/"reloaded"
        gr.Textbox(visible=False, elem_id="resume_code"),
        gr.Textbox(visible=False, elem_id="resume_draft"),
        gr.Textbox(visible=False, elem_id="resume_kind"),
    ]
    preset_text = gr.Textbox(visible=False, elem_id="preset_text")
    late.update(status=status, preset=preset)
    link = gr.Textbox(
        label="Share link", elem_id="share_link", buttons=["copy"], lines=1, max_lines=30
    )
    return dict(
        preset=preset,
        search=search,
        add=add,
        status=status,
        active=active,
        download=download,
        upload=upload,
        upload_file=upload_file,
        share=share,
        share_code=share_code,
        resume=resume,
        preset_text=preset_text,
        link=link,
    )


def _sampling_controls(service: Service) -> list[gr.components.Component]:
    limits, context = service.limits, service.model.context_length
    longest = min(limits.max_new_tokens, context or limits.max_new_tokens)
    reads = f"; the model reads {context:,} tokens in all, prompt included" if context else ""
    with gr.Accordion("Sampling", open=False):
        return [
            gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", elem_id="temperature"),
            gr.Slider(0.05, 1, value=1.0, step=0.05, label="Top-p", elem_id="top_p"),
            gr.Slider(
                1,
                longest,
                value=min(limits.default_new_tokens, longest),
                step=1,
                label="Max new tokens",
                info=f"At most {limits.max_new_tokens:,} on this server (max_new_tokens){reads}.",
                elem_id="max_tokens",
            ),
            gr.Number(
                -1,
                label="Seed (-1: random; both chats always share it)",
                elem_id="seed",
                precision=0,
            ),
        ]


def _render_sliders(
    h: Handlers, service: Service, rows: gr.State, layout: gr.State, late: dict[str, Any]
) -> None:
    @gr.render(inputs=[layout])
    def sliders(current: dict) -> None:
        rev = current["rev"]
        if not current["rows"]:
            gr.Markdown("No features: pick a preset or add one below.", elem_id="no-features")
        feature_rows: list[FeatureRow] = current["rows"]
        for i, row in enumerate(feature_rows):
            with gr.Group(elem_classes=["feature-card"], elem_id=f"card-{i}"):
                gr.HTML(
                    card_html(
                        row,
                        top_contexts(service, row),
                        nearest_features(service, row),
                        feature_statistics(service, row),
                    ),
                    padding=False,
                )
                with gr.Row(elem_classes=["feature-controls"]):
                    on = gr.Checkbox(
                        row.on,
                        label="on",
                        interactive=True,
                        key=f"on-{rev}-{i}",
                        elem_id=f"on-{i}",
                        scale=0,
                        min_width=70,
                    )
                    scope = gr.Dropdown(
                        [name for name, _, _ in SCOPES],
                        value=scope_name(row),
                        label="Steers",
                        interactive=True,
                        key=f"scope-{rev}-{i}",
                        elem_id=f"scope-{i}",
                        elem_classes=["feature-scope"],
                        scale=1,
                        min_width=0,
                    )
                    remove = gr.Button(
                        "✕",
                        key=f"rm-{rev}-{i}",
                        elem_id=f"remove-{i}",
                        elem_classes=["feature-remove"],
                        size="sm",
                        scale=0,
                        min_width=44,
                    )
                if row.mode != "ablate":
                    span = slider_range(row, service)
                    unit = "× max activation" if row.unit == "max_act" else "raw units"
                    slider = gr.Slider(
                        -span,
                        span,
                        value=row.value,
                        step=0.1,
                        label=f"Strength ({unit})",
                        interactive=True,
                        key=f"slider-{rev}-{i}",
                        elem_id=f"feature-{i}",
                    )
                    slider.change(
                        lambda v, r, i=i: h.set_value(r, i, "value", v), [slider, rows], rows
                    )
            on.change(lambda v, r, i=i: h.set_value(r, i, "on", v), [on, rows], rows)
            scope.input(lambda v, r, i=i: h.set_scope(r, i, v), [scope, rows], rows)
            # A visitor's own change makes the steering no longer the preset as shipped; the
            # browser alone says so (.input fires on the visitor's moves, not on a render).
            on.input(None, None, late["preset"], js=CUSTOM_JS)
            scope.input(None, None, late["preset"], js=CUSTOM_JS)
            if row.mode != "ablate":
                slider.input(None, None, late["preset"], js=CUSTOM_JS)
            remove.click(
                lambda r, lay, i=i: h.remove(r, lay, i),
                [rows, layout],
                [rows, layout, late["status"], late["preset"]],
            )


def _wire(page, h: Handlers, rows, layout, chats, chat: dict, c: dict, sampling: list) -> None:
    steering_out = [rows, layout, c["status"], c["preset"]]
    c["preset"].input(h.pick_preset, [c["preset"], layout], steering_out)
    c["add"].click(h.add, [c["search"], rows, layout], steering_out)
    # Ranked matches among all the labels as the visitor types (the box then filters them).
    # Every key counts, answered one at a time in order, so the last answer is the last text.
    c["search"].key_up(
        h.search_choices,
        None,
        c["search"],
        api_visibility="private",
        trigger_mode="multiple",
        concurrency_limit=1,
        concurrency_id="feature_search",
        show_progress="hidden",
    )
    upload_js = UPLOAD_JS % {"limit": h.service.limits.max_upload_bytes}
    c["upload"].click(h.upload, [*c["upload_file"], layout, rows], steering_out, js=upload_js)
    exports = [c["preset_text"], c["share_code"], c["active"]]
    rows.change(h.exports, rows, exports, api_visibility="private")
    c["share_code"].change(None, c["share_code"], None, js=TRACK_CODE_JS)
    c["share"].click(None, c["share_code"], c["link"], js=SHARE_JS)
    c["download"].click(None, c["preset_text"], None, js=DOWNLOAD_JS)
    resumed = [*steering_out, chat["msg"], chat["notice"]]
    page.load(h.load, [*c["resume"], layout], resumed, js=RESUME_JS)
    page.load(h.exports, rows, exports)

    inputs = [chat["msg"], chats, rows, *sampling]
    outputs = [chat["msg"], chats, chat["steered"], chat["baseline"], chat["notice"]]
    common: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": None}
    sent = chat["send"].click(h.respond, inputs, outputs, api_name="respond", js=SEND_JS, **common)
    submitted = chat["msg"].submit(
        h.respond, inputs, outputs, api_visibility="private", js=SEND_JS, **common
    )
    regenerated = chat["regen"].click(
        h.regenerate, inputs[1:], outputs[1:], api_visibility="private", js=REGENERATE_JS, **common
    )
    running = [sent, submitted, regenerated]
    for event in running:
        event.success(None, None, None, js=ANSWERED_JS)
        event.failure(None, None, None, js=FAILED_JS)
    # Stop only cancels the request: the reply's own event then ends it, shows what was
    # written with a "(stopped)" mark, and signals the page that the reply is done.
    chat["stop"].click(h.stop, None, None, api_visibility="private")
    chat["clear"].click(h.clear, None, outputs, cancels=running, api_visibility="private")
    chat["clear"].click(None, None, None, js=CLEARED_JS)
    # The next action clears what the last one said: chatting clears the steering's status,
    # steering clears the chat's notice (both in the browser, no server round trip).
    for trigger in (chat["send"], chat["regen"], chat["clear"]):
        trigger.click(None, None, c["status"], js=EMPTY_JS)
    chat["msg"].submit(None, None, c["status"], js=EMPTY_JS)
    for trigger in (c["add"], c["upload"], c["share"], c["download"]):
        trigger.click(None, None, chat["notice"], js=EMPTY_JS)
    c["preset"].input(None, None, chat["notice"], js=EMPTY_JS)
