"""The README's screenshots: ``python -m ui.screenshots --out docs/`` (``make screenshots``).

Starts the server on the shipped defaults (the demo model, its presets) on 127.0.0.1, sends
the first suggested prompt with the default preset, and saves the page at a desktop size
(``screenshot-desktop.png``, 1400x900) and a phone size (``screenshot-phone.png``, 390x844).
Needs playwright and Debian's chromium (``/usr/bin/chromium``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
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
    """Serve the defaults (``steering serve``, as a visitor gets it), chat once per size with
    the first prompt the page suggests, and save one PNG per size in ``out``."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "steering", "serve", "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL)
    saved = []
    try:
        _wait_until_up(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            for name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(url)
                page.locator("#msg textarea").wait_for(timeout=TIMEOUT_MS)
                prompt = page.locator("#try button").first.inner_text()  # the first suggestion
                page.locator("#msg textarea").fill(prompt)
                page.locator("#send").click()
                page.wait_for_function(  # the page's own signal that the reply has ended
                    "() => Number(document.body.dataset.replies || 0) > 0"
                    " && document.querySelectorAll('#baseline .message.bot').length > 0",
                    timeout=TIMEOUT_MS,
                )
                page.evaluate("() => window.scrollTo(0, 0)")
                path = out / f"screenshot-{name}.png"
                page.screenshot(path=str(path))
                saved.append(path)
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return saved


def _wait_until_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"steering serve exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("steering serve did not answer in time")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
