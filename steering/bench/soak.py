"""A bounded soak of the server over loopback: ``python -m steering.bench.soak``.

Starts the server in this process on 127.0.0.1 with the demo model, sends a fixed number of
requests from a bounded number of concurrent clients, and stops by itself (``--requests``,
``--max-seconds``). The requests come from many visitors (each request names one of
``--visitors`` documentation-range addresses in ``X-Forwarded-For``, which the server trusts
from 127.0.0.1 only), so the per-visitor limits and the fair queue are in play.

The mix: plain replies, compares, streams dropped at a random point (while queued, after the
first chunk, mid-reply), invalid steerings, invalid bodies, and page events (a reply on the demo
page through gradio_client, some cancelled half-way). Then it checks that nothing
leaked: steering hooks left on the model, rows left in the batch, requests left in the queue,
threads against their idle count, resident memory at the end against after warm-up, and a
reference greedy reply equal before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

PROMPTS = (
    "tell me about the golden gate bridge",
    "what do cats like",
    "tell me about the sea",
    "hello how are you",
)


@dataclass
class SoakReport:
    """What the soak measured; ``ok`` when nothing leaked and the reference reply held."""

    requests: int = 0
    outcomes: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    hooks_left: int = 0
    rows_left: int = 0
    waiting_left: int = 0
    threads_idle: int = 0
    threads_end: int = 0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    reference_equal: bool = False
    server_errors: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.hooks_left == 0
            and self.rows_left == 0
            and self.waiting_left == 0
            and self.threads_end <= self.threads_idle + POOL_SLACK
            and self.reference_equal
            and self.server_errors == 0
        )

    def table(self) -> str:
        lines = [
            f"requests          {self.requests} in {self.seconds:.1f} s",
            "outcomes          " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"5xx answers       {self.server_errors}",
            f"hooks left        {self.hooks_left}",
            f"rows left         {self.rows_left}",
            f"queue left        {self.waiting_left}",
            f"threads           {self.threads_end} at the end, {self.threads_idle} idle before",
            f"RSS               {self.rss_end_mb:.1f} MB at the end, "
            f"{self.rss_warm_mb:.1f} MB after warm-up",
            f"reference reply   {'equal' if self.reference_equal else 'CHANGED'} before and after",
        ]
        return "\n".join(lines)


CLIENT_THREADS = ("_stream_heartbeat", "_telemetry_worker")  # gradio_client's, if in this process
# anyio's worker pool (bounded at 40) may keep a few more idle workers after a peak than after
# the warm-up; a leak grows with the number of requests instead
POOL_SLACK = 4


def server_threads() -> int:
    """Threads of this process that are not the soak's own page clients."""
    return sum(not any(n in t.name for n in CLIENT_THREADS) for t in threading.enumerate())


def rss_mb() -> float:
    """This process's resident memory in MB (Linux), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


REFERENCE = {
    "messages": [{"role": "user", "content": PROMPTS[0]}],
    "temperature": 0,
    "max_tokens": 24,
}


def _body(model: str, rng: random.Random, preset: str | None) -> tuple[str, dict[str, Any]]:
    """One request of the mix: (kind, body)."""
    kinds = ["plain", "compare", "stream-drop", "stream", "bad-steering", "bad-body", "page"]
    kind = rng.choice(kinds)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "temperature": rng.choice([0, 0.7, 1.0]),
        "max_tokens": rng.randint(1, 24),
        "seed": rng.randint(0, 1000),
    }
    if preset and kind in ("compare", "stream", "stream-drop") and rng.random() < 0.7:
        body["steering"] = {"presets": [{"name": preset, "scale": rng.choice([0.5, 1.0, 2.0])}]}
    if kind == "compare":
        body["compare"] = True
    if kind.startswith("stream"):
        body["stream"] = True
    if kind == "bad-steering":
        body["steering"] = rng.choice(
            [{"presets": [{"name": "no-such-preset"}]}, {"format_version": 2}, [1, 2], "x"]
        )
    if kind == "bad-body":
        body = rng.choice([{"model": model}, {"messages": "hi"}, {"model": model, "n": 3}])
    return kind, body


def visitor_address(i: int) -> str:
    """A made-up visitor address from the documentation ranges (RFC 5737): never dialled."""
    block = ("198.51.100", "203.0.113")[(i // 250) % 2]
    return f"{block}.{1 + i % 250}"


def _page_event(url: str, message: str, seed: int, cancel: bool) -> str:
    """One reply on the page (a new browser session each time); its outcome."""
    from gradio_client import Client

    client = Client(f"{url}/", verbose=False)
    job = client.submit(message, 0.7, 1.0, 8, seed, api_name="/respond")
    try:
        if cancel:
            time.sleep(0.05)
            job.cancel()
            return "page cancelled"
        steered = job.result(timeout=120)[1]
        return "page ok" if steered else "page empty"
    except Exception as e:  # the page answers a visitor's error with gr.Error
        return f"page {type(e).__name__}"
    finally:
        client.close()


async def _one(
    client: Any,
    pages: Executor,
    url: str,
    kind: str,
    body: dict[str, Any],
    rng: random.Random,
    visitor: str,
) -> str:
    """Send one request; its outcome (a status code, or how a dropped stream ended)."""
    import httpx

    if kind == "page":
        message = body["messages"][0]["content"]
        return await asyncio.to_thread(
            _page_event, url, message, rng.randint(0, 99), rng.random() < 0.3
        )
    path = f"{url}/v1/chat/completions"
    headers = {"X-Forwarded-For": visitor}
    try:
        if kind != "stream-drop":
            answer = await client.post(path, json=body, headers=headers)
            return str(answer.status_code)
        drop_after = rng.choice([0, 0, 1, 3, 8])  # 0: before the first chunk (often queued)
        async with client.stream("POST", path, json=body, headers=headers) as answer:
            if answer.status_code != 200 or drop_after == 0:
                return f"{answer.status_code} dropped"
            seen = 0
            async for _line in answer.aiter_lines():
                seen += 1
                if seen >= drop_after:
                    break
            return f"{answer.status_code} dropped"
    except httpx.TimeoutException:
        return "timeout"


async def _soak(
    url: str,
    model: str,
    preset: str | None,
    n: int,
    clients: int,
    seconds: float,
    visitors: int,
) -> Counter:
    import httpx

    rng = random.Random(0)
    outcomes: Counter = Counter()
    limit = asyncio.Semaphore(clients)
    deadline = time.monotonic() + seconds
    timeout = httpx.Timeout(60.0)

    # the page's clients run in their own processes: their memory and threads are not the
    # server's, which is what the soak measures
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pages:
        async with httpx.AsyncClient(timeout=timeout) as client:

            async def task(i: int) -> None:
                async with limit:
                    if time.monotonic() > deadline:
                        outcomes["not sent (time)"] += 1
                        return
                    kind, body = _body(model, random.Random(i), preset)
                    who = visitor_address(i % visitors)
                    outcome = await _one(client, pages, url, kind, body, rng, who)
                    outcomes[f"{kind}: {outcome}"] += 1

            await asyncio.gather(*(task(i) for i in range(n)))
    return outcomes


def _reference(url: str, model: str) -> list[str]:
    import httpx

    answer = httpx.post(
        f"{url}/v1/chat/completions", json={**REFERENCE, "model": model}, timeout=60
    )
    answer.raise_for_status()
    return [c["message"]["content"] for c in answer.json()["choices"]]


def run(
    service: Any, *, requests: int, clients: int, max_seconds: float, visitors: int = 500
) -> SoakReport:
    """Serve ``service`` on 127.0.0.1, soak it, and report (the service is closed after)."""
    import uvicorn

    from ..hooks import count_hooks
    from ..serve.app import create_app
    from ..serve.visitors import Access

    app = create_app(service, page=True, access=Access(trusted_proxies=("127.0.0.1",)))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="soak-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    report = SoakReport(requests=requests)
    try:
        model = service.model_id
        preset = next(iter(service.presets), None)
        before = _reference(url, model)
        warm = min(8 * clients, requests)  # as busy as the soak: the thread pools at size
        asyncio.run(_soak(url, model, preset, warm, clients, max_seconds, visitors))
        report.rss_warm_mb = rss_mb()
        report.threads_idle = server_threads()
        started = time.monotonic()
        outcomes = asyncio.run(_soak(url, model, preset, requests, clients, max_seconds, visitors))
        report.seconds = time.monotonic() - started
        report.outcomes = outcomes
        report.server_errors = sum(v for k, v in outcomes.items() if ": 5" in k)
        _settle(service, 30.0)
        report.reference_equal = _reference(url, model) == before
        report.hooks_left = count_hooks(service.model.model)
        health = service.health()
        report.rows_left, report.waiting_left = health["running_rows"], health["waiting"]
        report.threads_end = _settled_threads(report.threads_idle, 45.0)  # a loaded CPU is slow
        report.rss_end_mb = rss_mb()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()
    return report


def _settled_threads(idle: int, seconds: float) -> int:
    """The server's thread count once idle worker threads have retired (anyio retires a worker
    after 10 s without work), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while server_threads() > idle and time.monotonic() < deadline:
        time.sleep(0.5)
    return server_threads()


def _settle(service: Any, seconds: float) -> None:
    """Wait (bounded) until the backend has no rows and no queue left."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = service.health()
        if not health["running_rows"] and not health["waiting"]:
            return
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m steering.bench.soak``: soak the demo model's server and print the report."""
    parser = argparse.ArgumentParser(prog="python -m steering.bench.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests to send (1000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop sending after (600)")
    parser.add_argument("--visitors", type=int, default=500, help="distinct visitors (500)")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    from ..serve.app import ServeConfig, load_service

    report = run(
        load_service(ServeConfig()),
        requests=args.requests,
        clients=args.clients,
        max_seconds=args.max_seconds,
        visitors=args.visitors,
    )
    print(report.table())
    if args.json:
        data = {**report.__dict__, "outcomes": dict(report.outcomes), "ok": report.ok}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
