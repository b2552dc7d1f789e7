"""The demo page: steered and baseline chats side by side, streaming from one A/B generation.

The steering lives in two states: ``rows`` (the truth: every slider move writes there) and
``layout`` (the rows at the last structural change, with a revision number). Only ``layout``
re-renders the sliders, so moving a slider never rebuilds them. The conversation lives in a
third (``ui.conversation``): the chat panes are outputs only, so the server never reads a
history a client sends. Every event input is text, a number or a choice; a preset file is read
by the browser and sent as text, so nothing a visitor sends is ever stored as a file.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from steering.serve import Service

from . import conversation
from .features import FeatureRow, slider_range
from .handlers import NO_PRESET, Handlers
from .scripts import (
    ANSWERED_JS,
    DOWNLOAD_JS,
    FAILED_JS,
    HEAD,
    REGENERATE_JS,
    RESUME_JS,
    SEND_JS,
    SHARE_JS,
    TRACK_CODE_JS,
    UPLOAD_JS,
)

__all__ = ["CSS", "HEAD", "THEME", "build_page"]

THEME = gr.themes.Soft()
CSS = """
#panes { flex-wrap: wrap; }
#panes > div { min-width: 280px; }
@media (max-width: 760px) { #main { flex-direction: column; } }
"""
EXPLANATION = """
**What is steering?** A sparse autoencoder (SAE) splits the model's internal activations into
features that mean something to people, such as *the Golden Gate Bridge*. Steering clamps a
feature to a chosen strength while the model writes, and the model starts to see the world
through it ([Golden Gate Claude](https://www.anthropic.com/news/golden-gate-claude)). Both chats
below come from one generation with the same random numbers: only the steering differs.
Slider values are multiples of the feature's highest observed activation (× max) or raw units.
"""
EXAMPLES = [
    "Tell me about your weekend.",
    "What should I see on a trip to California?",
    "Describe yourself in three sentences.",
    "Write a short poem about the sea.",
]


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
        gr.Markdown(f"# Steering · `{service.model_id}`\n{EXPLANATION}")
        with gr.Row(elem_id="main"):
            with gr.Column(scale=3):
                chat = _chat_column(service)
            with gr.Column(scale=2, min_width=280):
                controls = _steering_column(h, service, rows, layout)
                sampling = _sampling_controls(service)
        _wire(page, h, rows, layout, chats, chat, controls, sampling)
    return page


def _chat_column(service: Service) -> dict[str, Any]:
    with gr.Row(elem_id="panes", equal_height=True):
        steered = _chatbot("Steered", "steered")
        baseline = _chatbot("Baseline", "baseline")
    with gr.Row():
        msg = gr.Textbox(
            show_label=False,
            placeholder="Say something…",
            elem_id="msg",
            scale=5,
            max_length=service.limits.max_message_chars,
        )
        send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
    notice = gr.Markdown("", elem_id="notice")
    with gr.Row():
        stop = gr.Button("Stop", elem_id="stop", variant="stop", size="sm")
        regen = gr.Button("Regenerate", elem_id="regenerate", size="sm")
        clear = gr.Button("Clear", elem_id="clear", size="sm")
    gr.Examples(EXAMPLES, inputs=msg, label="Try")
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
        label=label, elem_id=elem_id, height=420, buttons=["copy", "copy_all"], min_width=280
    )


def _steering_column(
    h: Handlers, service: Service, rows: gr.State, layout: gr.State
) -> dict[str, Any]:
    gr.Markdown("### Steering")
    preset = gr.Dropdown(
        [NO_PRESET, *service.presets], value=h.default_preset(), label="Preset", elem_id="preset"
    )
    _render_sliders(h, service, rows, layout)
    with gr.Row():
        search = gr.Dropdown(
            h.feature_choices(),
            value=None,
            label="Add a feature: search its label, or type an index",
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
    link = gr.Textbox(label="Share link", elem_id="share_link", buttons=["copy"], max_lines=2)
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
    limit, default = service.limits.max_new_tokens, service.limits.default_new_tokens
    with gr.Accordion("Sampling", open=False):
        return [
            gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", elem_id="temperature"),
            gr.Slider(0.05, 1, value=1.0, step=0.05, label="Top-p", elem_id="top_p"),
            gr.Slider(
                1,
                limit,
                value=default,
                step=1,
                label="Max new tokens",
                elem_id="max_tokens",
            ),
            gr.Number(
                -1,
                label="Seed (-1: random; both chats always share it)",
                elem_id="seed",
                precision=0,
            ),
        ]


def _render_sliders(h: Handlers, service: Service, rows: gr.State, layout: gr.State) -> None:
    @gr.render(inputs=[layout])
    def sliders(current: dict) -> None:
        rev = current["rev"]
        if not current["rows"]:
            gr.Markdown("No features: pick a preset or add one below.", elem_id="no-features")
        feature_rows: list[FeatureRow] = current["rows"]
        for i, row in enumerate(feature_rows):
            unit = "× max" if row.unit == "max_act" else "raw"
            with gr.Group():
                with gr.Row(equal_height=True):
                    on = gr.Checkbox(
                        row.on,
                        label="on",
                        interactive=True,
                        key=f"on-{rev}-{i}",
                        elem_id=f"on-{i}",
                        scale=0,
                    )
                    gr.Markdown(f"**{row.label}** · #{row.feature} · {row.mode} ({unit})")
                    remove = gr.Button(
                        "✕", key=f"rm-{rev}-{i}", elem_id=f"remove-{i}", size="sm", scale=0
                    )
                if row.mode != "ablate":
                    span = slider_range(row, service)
                    slider = gr.Slider(
                        -span,
                        span,
                        value=row.value,
                        step=0.1,
                        show_label=False,
                        interactive=True,
                        key=f"slider-{rev}-{i}",
                        elem_id=f"feature-{i}",
                    )
                    slider.change(
                        lambda v, r, i=i: h.set_value(r, i, "value", v), [slider, rows], rows
                    )
            on.change(lambda v, r, i=i: h.set_value(r, i, "on", v), [on, rows], rows)
            remove.click(lambda r, lay, i=i: h.remove(r, lay, i), [rows, layout], [rows, layout])


def _wire(page, h: Handlers, rows, layout, chats, chat: dict, c: dict, sampling: list) -> None:
    steering_out = [rows, layout, c["status"]]
    c["preset"].input(h.pick_preset, [c["preset"], layout], steering_out)
    c["add"].click(h.add, [c["search"], rows, layout], steering_out)
    upload_js = UPLOAD_JS % {"limit": h.service.limits.max_upload_bytes}
    c["upload"].click(h.upload, [*c["upload_file"], layout, rows], steering_out, js=upload_js)
    exports = [c["preset_text"], c["share_code"], c["active"]]
    rows.change(h.exports, rows, exports, api_visibility="private")
    c["share_code"].change(None, c["share_code"], None, js=TRACK_CODE_JS)
    c["share"].click(None, c["share_code"], c["link"], js=SHARE_JS)
    c["download"].click(None, c["preset_text"], None, js=DOWNLOAD_JS)
    resumed = [*steering_out, c["preset"], chat["msg"], chat["notice"]]
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
    chat["stop"].click(h.stop, None, None, cancels=running, api_visibility="private")
    chat["clear"].click(h.clear, None, outputs, cancels=running, api_visibility="private")
    for button in (chat["stop"], chat["clear"]):
        button.click(None, None, None, js=ANSWERED_JS)
