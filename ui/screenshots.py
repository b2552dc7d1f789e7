"""The README's screenshots: ``python -m ui.screenshots --out docs/`` (``make screenshots``).

Starts the server on the shipped defaults (the demo model, its presets) on 127.0.0.1, sends
the first suggested prompt with the default preset, and saves the page at a desktop size
(``screenshot-desktop.png``, 1400x900) and a phone size (``screenshot-phone.png``, 390x844).
Needs playwright and Debian's chromium (``/usr/bin/chromium``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SIZES = {"desktop": (1400, 900), "phone": (390, 844)}
TIMEOUT_MS = 60_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ui.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    parser.add_argument("--chromium", default=CHROMIUM, help="the browser to drive")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in take(args.out, args.chromium):
        print(f"saved {path}")


def take(out: Path, chromium: str = CHROMIUM) -> list[Path]:
    """Serve the defaults, chat once per size, and save one PNG per size in ``out``."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    from steering.serve import about
    from steering.serve.app import ServeConfig, create_app, load_service

    service = load_service(ServeConfig())
    prompt = about(service).suggested_prompts[0]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    saved = []
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            for name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#msg textarea").wait_for(timeout=TIMEOUT_MS)
                page.locator("#msg textarea").fill(prompt)
                page.locator("#send").click()
                page.wait_for_function(
                    "() => Number(document.body.dataset.replies || 0) > 0", timeout=TIMEOUT_MS
                )
                page.evaluate("() => window.scrollTo(0, 0)")
                path = out / f"screenshot-{name}.png"
                page.screenshot(path=str(path))
                saved.append(path)
                page.close()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()
    return saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
