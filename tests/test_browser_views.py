"""The page's two views in a real browser (Playwright and Debian's chromium, as
``test_browser``): the strength sweep and what lights up."""

from __future__ import annotations

import re

from test_browser import (  # noqa: F401  (fixtures and the skip mark)
    browser,
    demo_server,
    open_page,
    pytestmark,
    send_and_wait,
    server,
    set_number,
    wait_status,
)

from steering.serve import SamplingParams
from ui.handlers import Handlers

PROMPT = "hello how are you"
MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)


def open_section(page, title: str, inside: str) -> None:
    """Open one of the views' accordions (closed when the page loads) by its title."""
    page.get_by_text(title).first.click()
    page.locator(inside).wait_for(state="visible", timeout=10_000)


def wait_sweep_done(page) -> None:
    page.wait_for_function(
        "() => document.querySelector('#sweep-cards .sweep')?.dataset.state === 'done'",
        timeout=30_000,
    )


def sweep_cards(page) -> list[tuple[str, str]]:
    cards = page.locator("#sweep-cards .sweep-card")
    return [
        (
            cards.nth(i).locator(".sweep-head").inner_text(),
            cards.nth(i).locator(".sweep-text").text_content() or "",
        )
        for i in range(cards.count())
    ]


def test_the_sweep_shows_its_rows_from_one_request(server, browser, monkeypatch):  # noqa: F811
    """Sweep: one engine request, a card per multiplier whose text is, text for text, the row
    of a direct ``Service.sweep`` with the same seed; a bad multiplier is named; Stop marks
    the rows stopped; the cards sit side by side on a desktop and wrap on a phone."""
    service = server.service
    handlers = Handlers(service)
    steering = handlers.preset(handlers.preset_rows("Golden Gate Bridge"))
    sampling = SamplingParams(temperature=0.9, top_p=1.0, max_new_tokens=12, seed=5)
    handle = service.sweep([{"role": "user", "content": PROMPT}], steering, MULTIPLIERS, sampling)
    texts = [""] * len(MULTIPLIERS)
    for event in handle:
        texts[event.row] += event.delta
    assert texts[0] != texts[-1]

    requests: list[int] = []
    submit = service.backend.submit

    def counted(request):
        requests.append(request.id)
        return submit(request)

    monkeypatch.setattr(service.backend, "submit", counted)
    page = open_page(browser, server.url)
    page.get_by_text("Sampling").click()
    set_number(page, "temperature", 0.9)
    set_number(page, "max_tokens", 12)
    set_number(page, "seed", 5)
    open_section(page, "Strength sweep", "#sweep-go")
    assert "(#3)" in page.locator("#sweep-feature input").input_value()
    page.locator("#sweep-multipliers textarea, #sweep-multipliers input").first.fill("0, 2, banana")
    page.locator("#sweep-prompt textarea").fill(PROMPT)
    page.locator("#sweep-go").click()
    wait_status(page, "“banana” is not a number", "sweep-notice")
    assert requests == []

    page.locator("#sweep-multipliers textarea, #sweep-multipliers input").first.fill(
        ", ".join(f"{m:g}" for m in MULTIPLIERS)
    )
    page.locator("#sweep-go").click()
    wait_sweep_done(page)
    assert len(requests) == 1
    assert sweep_cards(page) == list(zip(["0x (unsteered)", "0.5x", "1x", "2x"], texts))
    assert page.locator("#sweep-notice").inner_text().strip() == ""

    boxes = [c.bounding_box() for c in page.locator("#sweep-cards .sweep-card").all()]
    assert len({round(b["y"]) for b in boxes}) == 1  # side by side on a desktop
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    boxes = [c.bounding_box() for c in page.locator("#sweep-cards .sweep-card").all()]
    assert len({round(b["y"]) for b in boxes}) == 2  # two rows of two on a phone
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390

    # Stop: the rows end marked as stopped.
    page.set_viewport_size({"width": 1400, "height": 1000})
    set_number(page, "temperature", 0)
    set_number(page, "max_tokens", 200)
    server.slow.delay = 0.2
    try:
        page.locator("#sweep-go").click()
        page.wait_for_function(
            "() => document.querySelector('#sweep-cards .sweep')?.dataset.state === 'running'"
            " && document.querySelector('#sweep-cards .sweep-text')?.textContent.length > 0",
            timeout=30_000,
        )
        page.locator("#sweep-stop").click()
        wait_sweep_done(page)
    finally:
        server.slow.delay = 0.0
    assert len(requests) == 2
    assert page.locator("#sweep-cards .sweep-mark").all_inner_texts() == ["(stopped)"] * 4
    assert not service.backend.engine.live
    page.context.close()


BRIDGE_PROMPT = "I am visiting San Francisco. What should I cook tonight?"


def test_the_activation_view_highlights_the_bridge_feature_on_a_bridge_prompt(
    demo_server,  # noqa: F811
    browser,  # noqa: F811
):
    """On the demo model with the Golden Gate preset (its first feature, clamped on the prompt
    words): after a reply, "What lights up?" shades the prompt's "san" by the bridge feature
    (its activation over its max, as ``Service.activations`` gives it); clicking the token
    lists the bridge feature; clicking the reply's "golden" lists its top feature, which one
    click adds to the steering."""
    service = demo_server.service
    bridge = service.preset("Golden Gate Bridge").preset.edits[0]
    page = open_page(browser, demo_server.url)
    page.get_by_text("Sampling").click()
    set_number(page, "temperature", 0)
    steered, _ = send_and_wait(page, demo_server, BRIDGE_PROMPT)
    assert "golden gate bridge" in steered

    open_section(page, "What lights up:", "#lights-go")
    page.locator("#lights-go").click()
    pane = page.locator("#lights [data-pane=steered]")
    pane.wait_for(timeout=30_000)

    steered_features = [e.feature for e in service.preset("Golden Gate Bridge").preset.edits]
    prompt_only = service.activations(
        [{"role": "user", "content": BRIDGE_PROMPT}], "demo-sae", features=steered_features
    )
    san = prompt_only.tokens.index(" san")
    # A token is shaded by the steered feature that fires most there, over its max.
    expected = max(
        prompt_only.features[f][san] / prompt_only.max_activation[f] for f in steered_features
    )
    assert (
        prompt_only.features[bridge.feature][san] > 0.5 * prompt_only.max_activation[bridge.feature]
    )
    token = pane.locator(f".lit[data-t='{san}']")
    assert token.inner_text() == " san" or token.text_content() == " san"
    assert "lit-prompt" in (token.get_attribute("class") or "")
    shade = float(token.get_attribute("data-intensity") or 0)
    assert shade >= 0.5 and abs(shade - expected) < 1e-3, (shade, expected)
    background = token.evaluate("(e) => getComputedStyle(e).backgroundColor")
    alpha = float(re.findall(r"[\d.]+", background)[-1])
    assert abs(alpha - round(0.85 * expected, 3)) < 0.01, background
    token.click()
    detail = pane.locator(".lit-detail:not([hidden])")
    assert detail.count() == 1
    listed = detail.inner_text()
    bridge_label = service.saes["demo-sae"].labels[bridge.feature]
    assert "golden gate bridge" in bridge_label
    assert f"{bridge_label} (#{bridge.feature})" in listed and "in the steering" in listed

    # The reply's "golden": its top feature, added with one click as the search box adds it.
    texts = pane.locator(".lit").all_text_contents()
    start = len(prompt_only.tokens)  # the reply follows the prompt and its turn marker
    golden = texts.index(" golden", start)
    with_reply = service.activations(
        [{"role": "user", "content": BRIDGE_PROMPT}, {"role": "assistant", "content": steered}],
        "demo-sae",
    )
    assert with_reply.tokens[golden] == " golden"
    top, _ = with_reply.top[golden][0]
    label = service.saes["demo-sae"].labels[top]
    assert "golden" in label
    pane.locator(f".lit[data-t='{golden}']").click()
    detail = pane.locator(".lit-detail:not([hidden])")
    assert f"{label} (#{top})" in detail.inner_text()
    detail.locator(f".lit-add[data-choice='demo-sae#{top}']").click()
    wait_status(page, f"(#{top})")
    wait_status(page, f"Added **{label}**".replace("**", ""), "lights-notice")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('.feature-meta')]"
        f".some((e) => e.textContent.startsWith('#{top} '))",
        timeout=10_000,
    )
    assert page.locator("#preset input").input_value() == "(custom)"

    # The sweep's feature box follows the steering: the added feature can be swept.
    set_number(page, "max_tokens", 6)
    open_section(page, "Strength sweep", "#sweep-go")
    box = page.locator("#sweep-feature input")
    box.click()
    page.locator(f"#sweep-feature li[aria-label$='(#{top})']").first.click()
    page.locator("#sweep-multipliers textarea, #sweep-multipliers input").first.fill("0, 1")
    page.locator("#sweep-go").click()
    wait_sweep_done(page)
    assert [head for head, _ in sweep_cards(page)] == ["0x (unsteered)", "1x"]
    assert f"(#{top})" in page.locator("#sweep-cards .sweep-about").inner_text()
    page.context.close()
