"""The demo page: steered and baseline chats side by side, streaming from one A/B generation.

The steering lives in two states: ``rows`` (the truth: every slider move writes there) and
``layout`` (the rows at the last structural change, with a revision number). Only ``layout``
re-renders the sliders, so moving a slider never rebuilds them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from steering.serve import Service

from .features import FeatureRow, slider_range
from .handlers import NO_PRESET, Handlers

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
DOWNLOAD_JS = """(text) => {
  if (!text) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  link.download = "steering-preset.json";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}"""
SHARE_JS = """(code) => {
  const url = new URL(window.location.href);
  url.search = "";
  if (code) url.searchParams.set("steering", code);
  return url.toString();
}"""


def build_page(service: Service) -> gr.Blocks:
    """The page over ``service``: both chats, the steering column and the sampling controls."""
    h = Handlers(service)
    first_rows = h.preset_rows(h.default_preset())
    with gr.Blocks(title="Steering: feature steering with SAEs", delete_cache=(3600, 3600)) as page:
        rows = gr.State(first_rows)
        layout = gr.State({"rev": 0, "rows": first_rows})
        gr.Markdown(f"# Steering · `{service.model_id}`\n{EXPLANATION}")
        with gr.Row(elem_id="main"):
            with gr.Column(scale=3):
                chat = _chat_column()
            with gr.Column(scale=2, min_width=280):
                controls = _steering_column(h, service, rows, layout)
                sampling = _sampling_controls(service)
        _wire(page, h, rows, layout, chat, controls, sampling)
    return page


def _chat_column() -> dict[str, Any]:
    with gr.Row(elem_id="panes", equal_height=True):
        steered = _chatbot("Steered", "steered")
        baseline = _chatbot("Baseline", "baseline")
    with gr.Row():
        msg = gr.Textbox(
            show_label=False, placeholder="Say something…", elem_id="msg", scale=5, max_length=4000
        )
        send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
    with gr.Row():
        stop = gr.Button("Stop", elem_id="stop", variant="stop", size="sm")
        regen = gr.Button("Regenerate", elem_id="regenerate", size="sm")
        clear = gr.Button("Clear", elem_id="clear", size="sm")
    gr.Examples(EXAMPLES, inputs=msg, label="Try")
    return dict(
        steered=steered, baseline=baseline, msg=msg, send=send, stop=stop, regen=regen, clear=clear
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
        upload = gr.UploadButton("Upload preset", file_types=[".json"], elem_id="upload", size="sm")
        share = gr.Button("Share link", elem_id="share", size="sm")
    share_code = gr.Textbox(visible=False, elem_id="share_code")
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
        share=share,
        share_code=share_code,
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


def _wire(page, h: Handlers, rows, layout, chat: dict, c: dict, sampling: list) -> None:
    steering_out = [rows, layout, c["status"]]
    c["preset"].input(h.pick_preset, [c["preset"], layout], steering_out)
    c["add"].click(h.add, [c["search"], rows, layout], steering_out)
    c["upload"].upload(h.upload, [c["upload"], layout, rows], steering_out)
    exports = [c["preset_text"], c["share_code"], c["active"]]
    rows.change(h.exports, rows, exports, api_visibility="private")
    c["share"].click(None, c["share_code"], c["link"], js=SHARE_JS)
    c["download"].click(None, c["preset_text"], None, js=DOWNLOAD_JS)
    page.load(h.load, [layout], [rows, layout, c["preset"], c["status"]])
    page.load(h.exports, rows, exports)

    inputs = [chat["msg"], chat["steered"], chat["baseline"], rows, *sampling]
    outputs = [chat["msg"], chat["steered"], chat["baseline"]]
    common: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": None}
    sent = chat["send"].click(h.respond, inputs, outputs, api_name="respond", **common)
    submitted = chat["msg"].submit(h.respond, inputs, outputs, api_visibility="private", **common)
    undo = chat["regen"].click(h.undo_last, outputs[1:], outputs, api_visibility="private")
    regenerated = undo.then(h.respond, inputs, outputs, api_visibility="private", **common)
    running = [sent, submitted, regenerated]
    chat["stop"].click(h.stop, None, None, cancels=running, api_visibility="private")
    chat["clear"].click(
        lambda: ("", [], []), None, outputs, cancels=running, api_visibility="private"
    )
