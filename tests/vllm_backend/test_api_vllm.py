"""The OpenAI-compatible API's tests (``tests/test_api.py``), every one, against a server whose
backend is vLLM: the same routes, steering, compare, sweep, streaming, logprobs, limits and
the eight-concurrent-requests test, on a tiny llama vLLM's CPU backend can run."""

from __future__ import annotations

import pytest
import test_api
from live_server import start_server, tiny_service
from test_api import *  # noqa: F403  (the tests themselves, collected here again)
from worlds import load, write_model

from steering.vllm.backend import VLLMSettings, start_vllm_backend


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-vllm")
    folder = write_model("llama", root / "tiny-llama")
    settings = VLLMSettings(str(folder), dtype="float32", enforce_eager=True, multiprocess=False)

    def backend(service):
        saes = list({id(s): s for s in service.resolver.loaded.values()}.values())
        return start_vllm_backend(service.model, saes, settings, service.limits)

    service = tiny_service(root, test_api.API_LIMITS, model=load(folder), backend=backend)
    assert service.health()["backend"] == "vllm"
    live = start_server(service)
    yield live
    live.stop()


def test_a_sweep_answers_each_multiplier_as_its_own_request_would(client):
    test_api.check_sweep(client, distinct=2)  # this model's replies at 0.5, 1 and 2 coincide
