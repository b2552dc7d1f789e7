"""Stopping ``steering serve --backend vllm`` as a service manager does (SIGTERM) stops
vLLM's engine-core and worker processes too: none outlives the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_stops_the_server_and_vllms_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "steering", "serve", "--backend", "vllm", "--vllm-eager"]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError(f"not ready:\n{log.read_text()[-3000:]}")
        children = psutil.Process(server.pid).children(recursive=True)
        assert any("VLLM" in p.name() for p in children)  # vLLM's engine core and its worker
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], [p.name() for p in alive]
        assert "MPClient: complete" in log.read_text()  # vLLM shut its engine down
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
