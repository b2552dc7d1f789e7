"""``steering serve --replicas 2`` on Ray Serve, on 127.0.0.1: requests land on both replicas
and each equals the reply one process gives alone; the page and the activation tools work
through the entry; every listener is on loopback; Ctrl-C leaves no Ray process.

Needs Ray (``make install-ray``); ``make test-ray`` runs it (STEERING_TEST_RAY=1)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from steering.ray_serve.loopback import RAY_LOOPBACK_ENV, listening_addresses
from steering.serve.app import ServeConfig, create_app, load_service

ROOT = Path(__file__).resolve().parents[2]
START_S = 420  # a cold start under load: Ray, two replicas, the entry
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
KEYS = [f"key-{i}" for i in range(10)]


def _auth(i: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[i]}"}


def test_replicas_that_cannot_fit_are_refused_by_name():
    """2 replicas of 1 GPU each on a machine without GPUs: an error naming the flag, not a
    server waiting for ever."""
    command = [sys.executable, "-m", "steering", "serve", "--replicas", "2"]
    command += ["--gpus-per-replica", "1", "--port", str(_free_port())]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: 2 replicas x --gpus-per-replica 1 need 2 GPUs, but this machine has 0" in (
        done.stderr
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayServer:
    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key in RAY_LOOPBACK_ENV:  # the server sets them itself: prove it
            env.pop(key, None)
        command = [sys.executable, "-m", "steering", "serve", "--replicas", "2"]
        command += ["--port", str(self.port)]
        for key in KEYS:  # each API key is a visitor of its own
            command += ["--api-key", key]
        self.log = log
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        self.descendants: dict[int, psutil.Process] = {}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited ({self.process.returncode}):\n{self.tail()}")
            self.remember_descendants()
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=5).json()
                if health.get("replicas", {}).get("RUNNING") == 2:
                    return
            except (httpx.HTTPError, json.JSONDecodeError):
                pass
            time.sleep(2)
        pytest.fail(f"not ready within {START_S} s:\n{self.tail()}")

    def remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> int:
        """Ctrl-C: SIGINT to the whole process group, Ray's own processes included."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    server = RayServer(tmp_path_factory.mktemp("ray") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        for p in server.descendants.values():  # never leave a cluster behind a failed test
            if p.is_running():
                p.kill()


@pytest.fixture(scope="module")
def alone():
    """The same API in this process, one model, this project's engine: the solo replies."""
    service = load_service(ServeConfig())
    with TestClient(create_app(service, page=False)) as client:
        yield client
    service.close()


PROMPT = [{"role": "user", "content": "Tell me about your day."}]


def _body(steering: dict | None = None, **extra) -> dict:
    body = {"model": "steering-demo", "messages": PROMPT, "temperature": 0, "max_tokens": 16}
    if steering is not None:
        body["steering"] = steering
    return {**body, **extra}


def _presets(*pairs: tuple[str, float]) -> dict:
    return {"presets": [{"name": name, "scale": scale} for name, scale in pairs]}


BODIES = [
    _body(),
    _body(_presets(("Golden Gate Bridge", 0.5))),
    _body(_presets(("Golden Gate Bridge", 1.0))),
    _body(_presets(("Golden Gate Bridge", 2.0))),
    _body(_presets(("Cats", 1.0))),
    _body(_presets(("Ocean", 1.0), ("Space", 0.5))),
    _body(_presets(("Pirate", 1.0)), compare=True),
    _body(_presets(("Honesty", 1.5)), temperature=0.8, seed=11),
]


def _rounded(value: object) -> object:
    """``value`` with every float to 4 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _texts(answer: dict) -> list[str]:
    return [choice["message"]["content"] for choice in answer["choices"]]


def test_steered_requests_land_on_both_replicas_and_equal_their_solo_replies(ray_server, alone):
    solo = []
    for body in BODIES:
        answer = alone.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        solo.append(_texts(answer.json()))
    assert len({tuple(t) for t in solo}) >= 6  # the steerings really differ

    def ask(i: int) -> tuple[list[str], str]:
        url = f"{ray_server.url}/v1/chat/completions"
        answer = httpx.post(url, json=BODIES[i], headers=_auth(i), timeout=120)
        assert answer.status_code == 200, answer.text
        return _texts(answer.json()), answer.headers["x-steering-replica"]

    replicas: set[str] = set()
    for _ in range(3):  # Ray picks the replica: a round almost surely uses both
        with concurrent.futures.ThreadPoolExecutor(len(BODIES)) as pool:
            results = list(pool.map(ask, range(len(BODIES))))
        assert [texts for texts, _ in results] == solo
        replicas |= {replica for _, replica in results}
        if len(replicas) == 2:
            break
    assert len(replicas) == 2, replicas


def test_a_streamed_compare_through_the_entry_equals_its_solo_reply(ray_server, alone):
    body = _body(_presets(("Golden Gate Bridge", 1.0)), compare=True)
    solo = _texts(alone.post("/v1/chat/completions", json=body).json())
    texts = ["", ""]
    with httpx.stream(
        "POST",
        f"{ray_server.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers=_auth(8),
        timeout=120,
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["x-steering-replica"]
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == solo and solo[0] != solo[1]


def test_activations_run_on_a_replica_and_equal_one_process(ray_server, alone):
    body = {"text": "the golden gate bridge in the fog", "top_k": 3, "features": [0, 1]}
    here = alone.post("/v1/activations", json=body)
    there = httpx.post(f"{ray_server.url}/v1/activations", json=body, headers=_auth(8), timeout=60)
    assert here.status_code == there.status_code == 200, there.text
    # the same tokens, features and labels; activations equal up to float summation order
    # (a replica runs torch on its one reserved core, this process on two)
    assert _rounded(there.json()) == _rounded(here.json())
    assert len(here.json()["tokens"]) > 5


def test_bad_input_is_refused_by_the_entry_as_in_one_process(ray_server, alone):
    body = _body(_presets(("No Such Preset", 1.0)))
    here = alone.post("/v1/chat/completions", json=body)
    url = f"{ray_server.url}/v1/chat/completions"
    there = httpx.post(url, json=body, headers=_auth(8), timeout=60)
    assert here.status_code == there.status_code == 400
    assert there.json()["error"]["message"] == here.json()["error"]["message"]


def test_one_visitor_has_one_limit_across_replicas(ray_server):
    """The per-visitor limits count at the entry, whichever replica answers: of 40 requests in
    a burst, one visitor gets its 30 a minute (max_requests_per_minute; the bucket refills
    half a request a second meanwhile), not 30 per replica."""
    body = _body(max_tokens=1)
    url = f"{ray_server.url}/v1/chat/completions"
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        answers = [client.post(url, json=body, headers=_auth(9)) for _ in range(40)]
    seconds = time.monotonic() - started
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(refused) == 40
    assert 30 <= len(ok) <= 30 + int(seconds / 2) + 1, (len(ok), seconds)
    assert len({a.headers["x-steering-replica"] for a in ok}) == 2  # both replicas answered
    assert "(max_requests_per_minute)" in refused[0].json()["error"]["message"]
    other = httpx.post(url, json=body, headers=_auth(8), timeout=60)
    assert other.status_code == 200  # another visitor is not held back


def test_the_page_loads_through_the_entry(ray_server):
    page = httpx.get(f"{ray_server.url}/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text
    config = httpx.get(f"{ray_server.url}/config", timeout=30)
    assert config.status_code == 200
    assert any(c.get("props", {}).get("elem_id") for c in config.json()["components"])


def test_a_chat_on_the_page_through_the_entry_gets_both_replies(ray_server):
    """Gradio's queue (join, then the event stream) runs in the one entry, so a page session
    never straddles replicas."""
    from gradio_client import Client

    from steering.chat import flatten_content

    client = Client(f"{ray_server.url}/", verbose=False)
    _, steered, baseline, _ = client.predict(
        "Tell me about your day.", 0, 1.0, 8, 0, api_name="/respond"
    )
    steered_text = flatten_content(steered[-1]["content"])
    baseline_text = flatten_content(baseline[-1]["content"])
    assert steered_text and baseline_text and steered_text != baseline_text  # the default preset


def test_every_listener_is_on_loopback(ray_server):
    ray_server.remember_descendants()
    pids = [ray_server.process.pid, *ray_server.descendants]
    listening = listening_addresses(pids)
    ports = {port for _, port, _ in listening}
    assert ray_server.port in ports  # the HTTP entry is among them
    assert len(listening) > 5  # Ray's own: GCS, raylet, workers
    outside = {
        (ip, port, psutil.Process(pid).name()) for ip, port, pid in listening if ip not in LOOPBACK
    }
    assert not outside


def test_ctrl_c_leaves_no_ray_process(ray_server):
    ray_server.remember_descendants()
    assert len(ray_server.descendants) >= 4  # gcs, raylet, controller, proxy, replicas
    assert ray_server.stop() == 0, ray_server.tail()
    assert "steering: shutting down Ray Serve" in ray_server.log.read_text()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        p.is_running() for p in ray_server.descendants.values()
    ):
        time.sleep(1)
    left = [
        p.pid
        for p in ray_server.descendants.values()
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert left == []  # every process it started (remembered as they came), Ray's included
