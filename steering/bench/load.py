"""A bounded load test of the server over HTTP on 127.0.0.1: ``python -m steering.bench.load``
(``make load``).

For each target it starts ``steering serve`` on the demo model on a free loopback port (this
project's engine or the vLLM backend; one process, or replicas on Ray Serve), sends every
request of the mix alone to learn its solo reply, then runs 1, 8, 32 and 64 concurrent clients
for ``--seconds`` each: a client sends streamed chat completions (greedy; unsteered, presets,
A/B compare), one after another, until the time is up, and waits for its last one. It
reports per level: completion tokens/s and requests/s (over the time from the first request
to the last reply), time to first token and end-to-end latency (p50, p95, p99), errors by
kind (HTTP status, or a stream that ended in an error), and ``mismatches``: replies that
differ from their solo reply (isolation: must be 0). Then the ratios of a Ray entry over the
direct server on the same resources.

Every client is a visitor of its own (an API key each), as on a public demo; the server's
waiting queue is raised to ``--max-waiting`` (default 128) so that 64 clients queue rather
than get "busy" answers. Nothing listens beyond 127.0.0.1, every wait is bounded, and each
server is stopped before the next starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timing import log

LEVELS = (1, 8, 32, 64)
START_S = 600  # a cold start of two vLLM replicas on a loaded 2-core machine
REQUEST_S = 300  # one request, queueing included, at most
MAX_TOKENS = 32

PROMPTS = ("Tell me about your day.", "What should I cook tonight?")
STEERINGS: tuple[tuple[str, dict[str, Any] | None, bool], ...] = (
    ("unsteered", None, False),
    ("golden-gate", {"presets": [{"name": "Golden Gate Bridge", "scale": 1.0}]}, False),
    ("cats", {"presets": [{"name": "Cats", "scale": 1.0}]}, False),
    (
        "ocean+space",
        {"presets": [{"name": "Ocean", "scale": 1.0}, {"name": "Space", "scale": 0.5}]},
        False,
    ),
    ("compare pirate", {"presets": [{"name": "Pirate", "scale": 1.0}]}, True),
    ("compare golden-gate x2", {"presets": [{"name": "Golden Gate Bridge", "scale": 2.0}]}, True),
)


@dataclass(frozen=True)
class Target:
    """One server to load: ``backend`` own or vllm, ``replicas`` 0 for one process."""

    name: str
    backend: str
    replicas: int = 0
    cpus_per_replica: float = 1.0

    def command(self, port: int, max_waiting: int) -> list[str]:
        command = [sys.executable, "-m", "steering", "serve", "--port", str(port)]
        command += ["--backend", self.backend, "--max-waiting", str(max_waiting)]
        command += ["--max-requests-per-minute", "100000", "--max-tokens-per-minute", "100000000"]
        if self.replicas:
            command += ["--replicas", str(self.replicas)]
            command += ["--cpus-per-replica", f"{self.cpus_per_replica:g}"]
        return command


TARGETS = {
    "own": Target("own engine, 1 process", "own"),
    "own-ray1": Target("own engine, Ray Serve, 1 replica (2 CPUs)", "own", 1, 2.0),
    "own-ray2": Target("own engine, Ray Serve, 2 replicas (1 CPU each)", "own", 2, 1.0),
    "vllm": Target("vLLM backend, 1 process", "vllm"),
    "vllm-ray1": Target("vLLM backend, Ray Serve, 1 replica (2 CPUs)", "vllm", 1, 2.0),
    "vllm-ray2": Target("vLLM backend, Ray Serve, 2 replicas (1 CPU each)", "vllm", 2, 1.0),
}


def mix() -> list[dict[str, Any]]:
    """The request bodies the clients cycle through: every steering on every prompt."""
    bodies = []
    for prompt in PROMPTS:
        for _, steering, compare in STEERINGS:
            body: dict[str, Any] = {
                "model": "steering-demo",
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": MAX_TOKENS,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if steering is not None:
                body["steering"] = steering
            if compare:
                body["compare"] = True
            bodies.append(body)
    return bodies


@dataclass
class Outcome:
    """One request: texts per row, tokens, times (s), or the error kind."""

    body: int
    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    ttft: float | None = None
    latency: float = 0.0
    error: str | None = None
    replica: str | None = None


async def send(client: Any, url: str, key: str, index: int, body: dict[str, Any]) -> Outcome:
    """One streamed chat completion; never raises."""
    import httpx

    outcome = Outcome(index)
    rows = 2 if body.get("compare") else 1
    texts = [""] * rows
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=REQUEST_S,
        ) as answer:
            outcome.replica = answer.headers.get("x-steering-replica")
            if answer.status_code != 200:
                await answer.aread()
                outcome.error = f"HTTP {answer.status_code}"
                return outcome
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    outcome.error = "stream error"
                    return outcome
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta", {}).get("content") or ""
                    if delta and outcome.ttft is None:
                        outcome.ttft = time.perf_counter() - started
                    texts[choice["index"]] += delta
                if chunk.get("usage"):
                    outcome.tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as e:
        outcome.error = type(e).__name__
    finally:
        outcome.latency = time.perf_counter() - started
    outcome.texts = texts
    return outcome


async def run_level(url: str, clients: int, seconds: float, bodies: list[dict[str, Any]]) -> Any:
    """``clients`` clients for ``seconds``; every outcome and the wall time."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client(c: int) -> None:
            n = c  # clients start at different places of the mix
            while time.perf_counter() < deadline:
                i = n % len(bodies)
                outcomes.append(await send(client, url, f"load-{c}", i, bodies[i]))
                n += 1

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - started
    return outcomes, wall


def percentiles(xs: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 (nearest rank), seconds."""
    if not xs:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(xs)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))], 3)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def summarize(outcomes: list[Outcome], wall: float, solo: list[list[str]]) -> dict[str, Any]:
    done = [o for o in outcomes if o.error is None]
    errors = Counter(o.error for o in outcomes if o.error is not None)
    mismatches = sum(1 for o in done if o.texts != solo[o.body])
    return {
        "requests": len(outcomes),
        "completed": len(done),
        "seconds": round(wall, 2),
        "completion_tokens_per_s": round(sum(o.tokens for o in done) / wall, 2),
        "requests_per_s": round(len(done) / wall, 3),
        "ttft_s": percentiles([o.ttft for o in done if o.ttft is not None]),
        "latency_s": percentiles([o.latency for o in done]),
        "errors": dict(errors),
        "mismatches": mismatches,
        "replicas_used": len({o.replica for o in done if o.replica}),
    }


class Server:
    """``steering serve`` in a subprocess on a free loopback port; stopped in ``close``."""

    def __init__(self, target: Target, max_waiting: int, log_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["STEERING_API_KEYS"] = ",".join(f"load-{c}" for c in range(max(LEVELS)))
        if target.backend == "vllm" and not target.replicas:
            # one process: vLLM's CPU build binds its threads to every core, holding none back
            cores = sorted(os.sched_getaffinity(0))
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.log_path = log_dir / f"{target.backend}-{target.replicas}.log"
        self.process = subprocess.Popen(
            target.command(self.port, max_waiting),
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.replicas = target.replicas

    def wait_ready(self) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < START_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log_path}")
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=5).json()
                running = health.get("replicas", {}).get("RUNNING", 0)
                if health.get("status") == "ok" and (not self.replicas or running == self.replicas):
                    return time.monotonic() - started
            except (httpx.HTTPError, json.JSONDecodeError):
                pass
            time.sleep(2)
        raise RuntimeError(f"the server was not ready within {START_S} s; see {self.log_path}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def load_target(
    target: Target, levels: Sequence[int], seconds: float, max_waiting: int, log_dir: Path
) -> dict[str, Any]:
    bodies = mix()
    server = Server(target, max_waiting, log_dir)
    try:
        ready_s = server.wait_ready()
        log(f"{target.name}: ready in {ready_s:.0f} s")
        solo_outcomes, _ = asyncio.run(_solo(server.url, bodies))
        failed = [o for o in solo_outcomes if o.error]
        if failed:
            raise RuntimeError(f"solo requests failed: {[o.error for o in failed]}")
        solo = [o.texts for o in solo_outcomes]
        result: dict[str, Any] = {"target": target.name, "ready_s": round(ready_s, 1)}
        for clients in levels:
            outcomes, wall = asyncio.run(run_level(server.url, clients, seconds, bodies))
            result[str(clients)] = summary = summarize(outcomes, wall, solo)
            log(
                f"  {clients:>2} clients: {summary['completion_tokens_per_s']:7.1f} tok/s, "
                f"{summary['requests_per_s']:.2f} req/s, ttft p50 {summary['ttft_s']['p50']} s, "
                f"latency p50 {summary['latency_s']['p50']} s p99 {summary['latency_s']['p99']} s, "
                f"errors {summary['errors']}, mismatches {summary['mismatches']}"
            )
        return result
    finally:
        server.close()


async def _solo(url: str, bodies: list[dict[str, Any]]) -> tuple[list[Outcome], float]:
    import httpx

    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        outcomes = [await send(client, url, "load-0", i, b) for i, b in enumerate(bodies)]
        return outcomes, time.perf_counter() - started


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Ray entry over the direct server with the same resources (one replica with every
    core), at 1 and 8 clients: end-to-end latency p50 and tokens/s."""
    found = {}
    for backend in ("own", "vllm"):
        direct, ray = results.get(backend), results.get(f"{backend}-ray1")
        if not direct or not ray:
            continue
        for clients in ("1", "8"):
            if clients not in direct or clients not in ray:
                continue
            d, r = direct[clients], ray[clients]
            if d["latency_s"]["p50"] and r["latency_s"]["p50"]:
                found[f"{backend}_ray1_vs_direct_latency_p50_c{clients}"] = round(
                    r["latency_s"]["p50"] / d["latency_s"]["p50"], 3
                )
            if d["completion_tokens_per_s"]:
                found[f"{backend}_ray1_vs_direct_tokens_per_s_c{clients}"] = round(
                    r["completion_tokens_per_s"] / d["completion_tokens_per_s"], 3
                )
    return found


def table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| server | clients | tok/s | req/s | TTFT p50 / p95 / p99 s | latency p50 / p95 / p99 s "
        "| errors | mismatches |",
        "|---|---:|---:|---:|---|---|---|---:|",
    ]
    for result in results.values():
        for clients in LEVELS:
            s = result.get(str(clients))
            if s is None:
                continue
            t, lat = s["ttft_s"], s["latency_s"]
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
            lines.append(
                f"| {result['target']} | {clients} | {s['completion_tokens_per_s']:.1f} "
                f"| {s['requests_per_s']:.2f} | {t['p50']} / {t['p95']} / {t['p99']} "
                f"| {lat['p50']} / {lat['p95']} / {lat['p99']} | {errors} | {s['mismatches']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steering.bench.load", description=__doc__)
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)}",
    )
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="per level (15)")
    parser.add_argument("--max-waiting", type=int, default=128, help="server queue (128)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--logs", type=Path, default=Path("load-logs"), help="servers' logs")
    args = parser.parse_args(argv)
    # SIGTERM as Ctrl-C: each server is stopped by its ``finally`` (they run in sessions of
    # their own, so a signal to this process alone would leave them running)
    signal.signal(signal.SIGTERM, _interrupt)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; use {list(TARGETS)}")
    levels = [int(x) for x in args.levels.split(",")]
    if not all(1 <= c <= max(LEVELS) for c in levels) or not 1 <= args.seconds <= 600:
        parser.error(f"levels must be 1..{max(LEVELS)} clients and seconds 1..600")
    args.logs.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    log(f"load test on {machine}: {levels} clients x {args.seconds:g} s, {MAX_TOKENS} tokens")
    results = {}
    for name in names:
        results[name] = load_target(
            TARGETS[name], levels, args.seconds, args.max_waiting, args.logs
        )
    report: dict[str, Any] = {
        "machine": machine,
        "load": {
            "levels": levels,
            "seconds_per_level": args.seconds,
            "max_tokens": MAX_TOKENS,
            "mix": [name for name, _, _ in STEERINGS],
            "prompts": list(PROMPTS),
        },
        "results": results,
        "ratios": ratios(results),
    }
    print(table(results))
    for key, value in report["ratios"].items():
        print(f"{key}: {value}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    raise SystemExit(main())
