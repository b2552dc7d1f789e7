"""The page in a real browser: Playwright driving Debian's chromium against a live server.

Skipped only when chromium (or playwright) is missing outside CI; with CI=true a missing browser
fails the run, so CI cannot pass without these tests. Set STEERING_SCREENSHOT=path to keep the
test page's screenshot (the README's are taken by `make screenshots`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from live_server import PRESET_NAME, golden_gate_preset, start_server, tiny_service

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"chromium is not installed ({CHROMIUM}); apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed; pip install -e '.[dev]'"
    return None


missing = _browser_missing()
if missing and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    raise RuntimeError(f"CI=true but the browser tests cannot run: {missing}")
pytestmark = pytest.mark.skipif(missing is not None, reason=missing or "")


class SlowSteps:
    """Makes each decode step take ``delay`` seconds, so a reply is long enough to stop."""

    def __init__(self, engine) -> None:
        self.delay = 0.0
        self.step = engine.step
        engine.step = self

    def __call__(self):
        if self.delay:
            time.sleep(self.delay)
        return self.step()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tiny_service(tmp_path_factory.mktemp("browser")))
    live.slow = SlowSteps(live.service.backend.engine)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def open_page(browser, url: str, **context):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, **context)
    page = ctx.new_page()
    page.goto(url)
    page.locator("#msg textarea").wait_for(timeout=30_000)
    return page


def set_number(page, elem_id: str, value: float) -> None:
    """Type ``value`` into a slider's (or number's) box until the component holds it: a box
    typed into just after its accordion opened can lose the value, and a click sent before
    the component holds it would carry the old one."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f"#{elem_id} input[type=number]")
    held = """([id, value]) => {
        const range = document.querySelector(`#${id} input[type=range]`);
        const box = document.querySelector(`#${id} input[type=number]`);
        return Number((range || box).value) === value && Number(box.value) === value;
    }"""
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        try:
            page.wait_for_function(held, arg=[elem_id, float(value)], timeout=6_000)
            return
        except PlaywrightTimeout:  # type it again
            continue
    raise AssertionError(f"#{elem_id} did not take the value {value}")


def slider_value(page, index: int = 0) -> float:
    return float(page.locator(f"#feature-{index} input[type=number]").input_value())


def replies(page) -> tuple[str, str]:
    def last(pane: str) -> str:
        bots = page.locator(f"#{pane} .message.bot")
        return bots.last.inner_text() if bots.count() else ""

    return last("steered"), last("baseline")


def clear_chat(page) -> None:
    """Clear the chat and wait for the server's answer to land: a Clear still on its way could
    otherwise empty the next reply's panes and notice after they are shown."""
    page.locator("#clear").click()
    page.wait_for_function(
        "() => !document.querySelector('#steered .message')"
        " && !document.querySelector('#baseline .message')",
        timeout=30_000,
    )


def replies_done(page) -> int:
    """How many replies the page says have ended (its own signal: body[data-replies])."""
    return int(page.evaluate("() => Number(document.body.dataset.replies || 0)"))


def wait_done(page, before: int) -> tuple[str, str]:
    """Until the page signals that the reply after ``before`` ended (its last update shown,
    Send back in place of Stop); then both panes' last replies."""
    page.wait_for_function(
        f"() => Number(document.body.dataset.replies || 0) > {before}"
        " && !document.body.classList.contains('steering-busy')",
        timeout=30_000,
    )
    return replies(page)


def send_and_wait(page, server, message: str) -> tuple[str, str]:
    """Send a message and wait until the page says the reply ended."""
    before = replies_done(page)
    page.locator("#msg textarea").fill(message)
    page.locator("#send").click()
    return wait_done(page, before)


def wait_for_tokens(server, count: int) -> None:
    """Until the engine has generated ``count`` tokens of a reply in flight."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(len(row.tokens) >= count for row in list(server.service.backend.engine.live)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no reply reached {count} tokens")


def wait_status(page, text: str, elem_id: str = "status") -> None:
    from playwright.sync_api import expect

    expect(page.locator(f"#{elem_id}")).to_contain_text(text, timeout=10_000)


def test_the_page_end_to_end(server, browser, tmp_path):
    started = time.monotonic()
    page = open_page(browser, server.url, accept_downloads=True)
    assert page.locator("#preset input").input_value() == PRESET_NAME
    assert slider_value(page) == 10.0
    page.get_by_text("Sampling").click()
    set_number(page, "temperature", 0)
    set_number(page, "max_tokens", 12)

    # Steered at 10x: the two panes differ.
    steered, baseline = send_and_wait(page, server, "hello how are you")
    assert steered and baseline and steered != baseline

    # Regenerate replaces the last exchange (greedy: with the same replies).
    before = replies_done(page)
    page.locator("#regenerate").click()
    assert wait_done(page, before) == (steered, baseline)
    assert page.locator("#steered .message.user").count() == 1

    # Slider at 0: the next reply of both panes is the same.
    clear_chat(page)
    set_number(page, "feature-0", 0)
    wait_status(page, "0 active features", "active")
    steered, baseline = send_and_wait(page, server, "hello how are you")
    assert steered == baseline
    # The steering is no longer the preset as shipped, and the preset box says so.
    assert page.locator("#preset input").input_value() == "(custom)"

    # Download the steering as a preset, change the slider, upload the file: it comes back.
    set_number(page, "feature-0", 6)
    wait_status(page, "1 active feature.", "active")
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / "preset.json"
    download.value.save_as(saved)
    preset = json.loads(saved.read_text())
    assert preset["edits"][0]["value"] == 6 and preset["edits"][0]["feature"] == 3
    set_number(page, "feature-0", 2)
    page.wait_for_timeout(300)
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(saved))
    wait_status(page, "Preset file loaded: 1 feature.")
    page.wait_for_function("document.querySelector('#feature-0 input[type=number]')?.value == '6'")
    assert page.locator("#preset input").input_value() == "(custom)"  # no longer the preset
    assert preset["saes"][0]["ref"] == "tiny-sae"  # the public name, not the server's path

    # A bad file gets a clear message and leaves the steering alone.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**preset, "edits": [{**preset["edits"][0], "value": 1e4}]}))
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(bad))
    wait_status(page, "cannot be used")
    assert slider_value(page) == 6

    # The share link restores the same sliders in a fresh browser context.
    page.locator("#share").click()
    link = page.locator("#share_link textarea")
    page.wait_for_function("document.querySelector('#share_link textarea').value.includes('?')")
    url = link.input_value()
    assert "steering=" in url
    shown = "(t) => t.scrollHeight <= t.clientHeight + 1"
    assert link.evaluate(shown), "the share link's box cuts the link"
    fresh = open_page(browser, url)
    fresh.wait_for_function("document.querySelector('#feature-0 input[type=number]')?.value == '6'")
    assert "share link: 1 feature." in fresh.locator("#status").inner_text()
    assert fresh.locator("#preset input").input_value() == "(custom)"
    fresh.context.close()

    # Removing every feature: the preset box says so, and so does the summary.
    page.locator("#remove-0").click()
    wait_status(page, "0 active features", "active")
    assert page.locator("#preset input").input_value() == "(none)"
    assert page.locator("#no-features").count() == 1

    shot = Path(os.environ.get("STEERING_SCREENSHOT", tmp_path / "page.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"browser test: {time.monotonic() - started:.1f} s")
    page.context.close()


class CancelProbe:
    """Records, for each row, the tokens the engine had when a cancel reached the engine loop,
    and the tokens each row ended with."""

    def __init__(self, loop) -> None:
        self.loop, self.cancel, self.dispatch = loop, loop.cancel, loop._dispatch
        self.at_cancel: dict[int, list[int]] = {}
        self.final: dict[int, int] = {}
        self.reasons: dict[int, str] = {}
        loop.cancel, loop._dispatch = self._cancel, self._dispatched

    def _cancel(self, request_id: int) -> None:
        for row in list(self.loop.engine.live):
            if row.request.id == request_id:
                self.at_cancel.setdefault(row.index, list(row.tokens))
        self.cancel(request_id)

    def _dispatched(self, events) -> None:
        for event in events:
            if event.finish_reason is not None:
                self.final[event.row] = event.completion_tokens
                self.reasons[event.row] = event.finish_reason
        self.dispatch(events)

    def close(self) -> None:
        self.loop.cancel, self.loop._dispatch = self.cancel, self.dispatch


def test_stop_ends_both_panes_within_one_decode_step(server, browser):
    """Stop cancels the request: the engine ends both rows before its next decode step, both
    panes show all that was generated, marked as stopped, and Send comes back."""
    page = open_page(browser, server.url)
    page.get_by_text("Sampling").click()
    set_number(page, "temperature", 0)  # greedy: this reply runs to max_tokens
    set_number(page, "max_tokens", 200)
    loop = server.service.backend
    probe = CancelProbe(loop)
    server.slow.delay = 0.4  # a decode step: long enough to see where Stop lands
    try:
        before = replies_done(page)
        page.locator("#msg textarea").fill("tell me a long story")
        page.locator("#send").click()
        expect_visible(page, "#stop")
        assert not page.locator("#send").is_visible()
        wait_for_tokens(server, 4)
        # Click just after the page has caught up with a step (steps are 0.4 s apart).
        shown = replies(page)
        deadline = time.monotonic() + 10
        while replies(page) == shown and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        at_click = replies(page)
        page.locator("#stop").click()
        final = wait_done(page, before)
    finally:
        server.slow.delay = 0.0
        probe.close()
    assert not server.service.backend.engine.live
    tokenizer = server.service.model.tokenizer
    longest_token = max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))
    for row, (clicked, text) in enumerate(zip(at_click, final, strict=True)):
        assert text.endswith("(stopped)"), text
        generated = probe.final[row] - len(probe.at_cancel[row])
        assert 0 <= generated <= 1, (row, probe.at_cancel[row], probe.final[row])
        written = text.removesuffix("(stopped)").rstrip()
        added = len(written) - len(clicked.rstrip())
        print(
            f"stop, pane {row}: {added} characters added after the click, {generated} token(s) "
            f"generated after the cancel reached the engine ({len(probe.at_cancel[row])} before)"
        )
        assert written.startswith(clicked.rstrip())
        assert added <= 2 * (longest_token + 1)  # what the page had not shown yet + one step
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    page.context.close()


def expect_visible(page, selector: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_be_visible(timeout=10_000)


def box(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on the page"
    return found


@pytest.mark.parametrize(
    "width,height", [(390, 844), (1024, 768), (1400, 900)], ids=["phone", "laptop", "desktop"]
)
def test_the_layout_fits_a_phone_a_laptop_and_a_desktop(server, browser, width, height):
    page = open_page(browser, server.url)
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    steered, baseline = box(page, "#steered"), box(page, "#baseline")
    label, message = box(page, ".feature-label"), box(page, "#msg textarea")
    send = box(page, "#send")
    print(
        f"{width}x{height}: steered {steered}, baseline {baseline}, message {message}, "
        f"feature label {label}"
    )
    assert label["width"] >= 150 and label["height"] < 60  # the card is never squeezed
    for pane in (steered, baseline):
        assert pane["height"] >= 150 and pane["x"] >= 0 and pane["x"] + pane["width"] <= width
    if width >= 768:  # side by side, at the same height
        assert baseline["x"] >= steered["x"] + steered["width"] - 1
        assert abs(baseline["y"] - steered["y"]) < 2
    else:  # one above the other
        assert baseline["y"] >= steered["y"] + steered["height"] - 1
    if width >= 1024:  # the message box and Send on screen without scrolling
        assert message["y"] + message["height"] <= height and message["y"] >= 0
        assert send["y"] + send["height"] <= height and send["x"] + send["width"] <= width
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    page.context.close()


def test_a_long_message_is_kept_and_the_limit_named(server, browser):
    """Nothing is cut silently: a message over max_message_chars stays whole in the box, and
    the page names the limit and by how much it is over."""
    page = open_page(browser, server.url)
    most = server.service.limits.max_message_chars
    text = "word " * ((most + 4_000) // 5)
    page.locator("#msg textarea").fill(text)
    assert len(page.locator("#msg textarea").input_value()) == len(text)
    before = replies_done(page)
    page.locator("#send").click()
    wait_done(page, before)
    notice = page.locator("#notice").inner_text()
    assert f"{len(text):,} characters, {len(text) - most:,} over" in notice
    assert "max_message_chars" in notice
    assert page.locator("#msg textarea").input_value() == text
    assert page.locator("#steered .message").count() == 0
    # The next action clears it.
    send_and_wait(page, server, "hello")
    assert page.locator("#notice").inner_text().strip() == ""
    page.context.close()


def test_no_message_shows_a_server_path(server, browser, tmp_path):
    """A preset naming a server folder, and garbage share links, get a visitor's sentence:
    no path, no decoder's words."""
    page = open_page(browser, server.url)
    sae_dir = "/srv/private/sae-folder"
    preset = json.loads(json.dumps(golden_gate_preset()))
    preset["saes"][0]["ref"] = sae_dir
    bad = tmp_path / "paths.json"
    bad.write_text(json.dumps(preset))
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(bad))
    wait_status(page, "cannot be used")
    shown = page.locator("#status").inner_text()
    assert sae_dir not in shown and "/" not in shown.split("cannot be used")[1], shown
    page.context.close()
    for code in ["%FF%FE", "__8A", "bm90IGpzb24"]:  # not base64, not UTF-8, not JSON
        page = open_page(browser, f"{server.url}/?steering={code}")
        wait_status(page, "share link")
        shown = page.locator("#status").inner_text()
        for leak in ("utf-8", "codec", "decode", "Traceback", "/tmp", sae_dir):
            assert leak not in shown, (code, shown)
        assert page.locator("#preset input").input_value() == "Golden Gate Bridge"
        page.context.close()


@pytest.fixture(scope="module")
def demo_server():
    """The shipped demo model behind a live server, as ``steering serve`` runs it."""
    from steering.serve.app import ServeConfig, load_service

    live = start_server(load_service(ServeConfig()))
    yield live
    live.stop()


def test_the_demo_page_says_what_answers_and_the_bridge_feature_works(demo_server, browser):
    """On the demo model: the page names the model and suggests its own prompts; the bridge
    feature found by searching "bridge", added at its default strength and scope, brings the
    bridge into the reply; a conversation too long for the model is explained in tokens."""
    from steering.demo import SUGGESTED_PROMPTS

    service = demo_server.service
    bridge = service.preset("Golden Gate Bridge").preset.edits[0]
    page = open_page(browser, demo_server.url)
    header = page.locator("#header").inner_text()
    size = sum(p.numel() for p in service.model.model.parameters()) / 1e6
    assert f"{size:.1f}M-parameter model" in header and "make run" in header
    from playwright.sync_api import expect

    for prompt in SUGGESTED_PROMPTS:  # the chips render after the page
        expect(page.locator("#try")).to_contain_text(prompt, timeout=15_000)
    # A chip fills the message box, in the browser alone (the guard opens no route for it).
    page.locator("#try button", has_text=SUGGESTED_PROMPTS[1]).click()
    expect(page.locator("#msg textarea")).to_have_value(SUGGESTED_PROMPTS[1], timeout=10_000)
    page.get_by_text("Sampling").click()
    set_number(page, "seed", 0)  # sampled at the page's default temperature, reproducibly

    for left in reversed(range(len(service.preset("Golden Gate Bridge").preset.edits))):
        page.locator("#remove-0").click()  # from no steering at all
        wait_status(page, f"{left} active feature", "active")
    search = page.locator("#search input")
    search.click()
    search.press_sequentially("bridge")
    option = page.locator(f"#search li[aria-label$='(#{bridge.feature})']")
    option.first.click()
    page.locator("#add").click()
    wait_status(page, f"(#{bridge.feature})")
    page.wait_for_timeout(500)
    card = page.locator("#card-0").first.inner_text()  # the group and its inner block
    assert f"#{bridge.feature}" in card and "demo-sae" in card
    assert bridge.positions == "prompt" and not bridge.skip_special_tokens  # the presets scope
    assert page.locator("#scope-0 input").input_value() == "the whole prompt"
    assert slider_value(page) > 0
    steered, baseline = send_and_wait(page, demo_server, SUGGESTED_PROMPTS[0])
    assert "bridge" in steered.lower() and "bridge" not in baseline.lower(), (steered, baseline)

    # Under every character limit, over the model's context.
    clear_chat(page)
    context = service.model.context_length
    long_message = " ".join(["the cat is on the mat"] * (context // 6 + 2))
    before = replies_done(page)
    page.locator("#msg textarea").fill(long_message)
    page.locator("#send").click()
    wait_done(page, before)
    notice = page.locator("#notice").inner_text()
    assert f"tokens; the model reads {context} (prompt and reply together)" in notice, notice
    assert page.locator("#msg textarea").input_value() == long_message
    page.context.close()


def stop_serving(live) -> None:
    """Stop the web server (the model and its engine keep running, as across a restart)."""
    live.server.should_exit = True
    live.thread.join(timeout=10)


def serve_again(live):
    """A new server (a new page app: no sessions) on the same port over the same model."""
    return start_server(live.service, port=int(live.url.rsplit(":", 1)[1]))


@pytest.mark.parametrize("when", ["while it is down", "once it is back", "while it replies"])
def test_a_message_sent_across_a_restart_is_kept_and_explained(browser, tmp_path, when):
    """A restart forgets every session. The visitor's next message is never lost silently:
    the page comes back with the message still in the box, the steering kept, and a notice
    that says what happened; sending it then gets its reply."""
    from playwright.sync_api import expect

    live = start_server(tiny_service(tmp_path))
    try:
        page = open_page(browser, live.url)
        set_number(page, "feature-0", 6)
        wait_status(page, "1 active feature.", "active")
        send_and_wait(page, live, "hello how are you")

        slow = SlowSteps(live.service.backend.engine)
        if when == "while it replies":
            slow.delay = 0.3
            page.locator("#msg textarea").fill("tell me about the bridge")
            page.locator("#send").click()
            wait_for_tokens(live, 2)
        stop_serving(live)
        slow.delay = 0.0
        if when == "once it is back":
            live = serve_again(live)
        if when != "while it replies":
            page.locator("#msg textarea").fill("tell me about the bridge")
            page.locator("#send").click()
        if when != "once it is back":
            page.wait_for_timeout(1000)
            live = serve_again(live)

        expect(page.locator("#notice")).to_contain_text("The server restarted", timeout=30_000)
        expect(page.locator("#notice")).to_contain_text("Your message is back in the box")
        assert page.locator("#msg textarea").input_value() == "tell me about the bridge"
        page.wait_for_function(
            "document.querySelector('#feature-0 input[type=number]')?.value == '6'"
        )
        steered, baseline = send_and_wait(page, live, "tell me about the bridge")
        assert steered and baseline
        assert page.locator("#steered .message.user").last.inner_text() == (
            "tell me about the bridge"
        )
        page.context.close()
    finally:
        live.stop()
