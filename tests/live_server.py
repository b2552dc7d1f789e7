"""A tiny model, an SAE and a "Golden Gate Bridge" preset written by the test, and a real server
(uvicorn on a free port, in a thread) for the API, gradio_client and browser tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn
from random_saes import random_sae
from tiny_models import HIDDEN, tiny_model, tiny_tokenizer

from steering.formats.writer import save_sae
from steering.limits import Limits
from steering.models import SteerableModel, find_layers
from steering.presets.library import PresetRegistry
from steering.serve import Service

PRESET_NAME = "Golden Gate Bridge"
FEATURE = 3
LABELS = {3: "the Golden Gate Bridge", 5: "cats", 7: "the sea"}


def write_files(root: Path) -> tuple[Path, Path]:
    """An SAE folder (SAELens format) and a presets folder with one preset that uses it."""
    sae = random_sae(HIDDEN, 32, layer=1)
    sae.labels = dict(LABELS)
    save_sae(sae, root / "sae")
    presets = root / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "golden-gate.json").write_text(json.dumps(golden_gate_preset(), indent=2))
    return root / "sae", presets


def golden_gate_preset(value: float = 10.0) -> dict:
    return {
        "format_version": 1,
        "name": PRESET_NAME,
        "description": "Clamps the test SAE's bridge feature.",
        "model": {"id": "tiny-llama"},
        "saes": [
            {"id": "s", "ref": "../sae", "layer": 1, "d_in": HIDDEN, "d_sae": 32, "format": None}
        ],
        "edits": [{"sae": "s", "feature": FEATURE, "label": LABELS[FEATURE], "value": value}],
        "labels_source": "test",
        "verified": False,
    }


def tiny_service(
    root: Path,
    limits: Limits = Limits(),
    model: SteerableModel | None = None,
    backend: Any = None,
) -> Service:
    """The tiny llama (or ``model``, named "tiny-llama", of hidden size ``HIDDEN``) with the
    test SAE and preset, on this project's engine (or ``backend``, see ``Service``)."""
    from steering.formats import load_sae

    sae_dir, presets = write_files(root)
    if model is None:
        net = tiny_model("llama")
        net.name_or_path = "tiny-llama"
        layers, template = find_layers(net)
        model = SteerableModel(net, tiny_tokenizer(), layers, template)
    registry = PresetRegistry.discover([presets], builtin=False, environ={})
    return Service(model, {"tiny-sae": load_sae(sae_dir)}, registry, limits, backend=backend)


@dataclass
class LiveServer:
    url: str
    service: Service
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()


def start_server(
    service: Service, page: bool = True, port: int | None = None, **options: Any
) -> LiveServer:
    """A fresh app over ``service`` on ``port`` (a free one by default); ``options`` go to
    ``create_app`` (e.g. ``access``)."""
    from steering.serve.app import create_app

    port = port or free_port()
    config = uvicorn.Config(
        create_app(service, page=page, **options),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
        proxy_headers=False,  # as ``steering serve``: only the app's Access trusts proxies
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", service, server, thread)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


torch.set_num_threads(min(2, torch.get_num_threads()))
