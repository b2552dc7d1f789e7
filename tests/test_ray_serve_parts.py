"""The parts of ``steering serve --replicas`` that need no Ray: what travels to a replica,
the entry's weightless model, the deployment options, and the command line's checks. The
whole server on Ray Serve is tested by ``make test-ray`` (tests/ray_serve)."""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
from fastapi.testclient import TestClient
from random_saes import random_sae

from steering.cli import main
from steering.demo import load_demo
from steering.errors import Busy, SteeringError
from steering.features.contrast import PromptTokens, prompt_means
from steering.limits import Limits
from steering.plan import FeatureEdit, SteeringPlan
from steering.ray_serve import RayOptions, app_builder
from steering.ray_serve.app import _cores_per_replica, replica_deployment_options
from steering.ray_serve.backend import RayBackend
from steering.ray_serve.wire import WireError, dumps, loads
from steering.requests import Event, build_request
from steering.sampling import SamplingParams
from steering.serve.app import ServeConfig, create_app, load_service


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_a_request_travels_with_the_replicas_own_sae(demo):
    model, sae = demo
    other = random_sae(128, 32, layer=1)
    plan = SteeringPlan(
        (
            FeatureEdit(sae, 5, "clamp", 4.0, unit="max_act", positions="generated"),
            FeatureEdit(other, 3, "add", -2.5, skip_special_tokens=True),
        )
    )
    request = build_request(model, "hello there", plan, SamplingParams(temperature=0.3, seed=9))
    request.visitor = "key:abc"
    data = dumps(request, model, {"demo": sae, "demo-path": sae, "other": other})
    assert len(data) < 4096  # references, not weights
    here_sae, here_other = pickle.loads(pickle.dumps(sae)), random_sae(128, 32, layer=1)
    got = loads(data, model, {"demo": here_sae, "other": here_other})
    assert got.rows[0].prompt_ids == request.rows[0].prompt_ids
    assert (got.id, got.visitor, got.sampling) == (request.id, "key:abc", request.sampling)
    first, second = got.rows[0].plan.edits
    assert first.sae is here_sae and second.sae is here_other
    assert (first.feature, first.mode, first.value, first.unit, first.positions) == (
        5,
        "clamp",
        4.0,
        "max_act",
        "generated",
    )
    assert (second.feature, second.mode, second.value, second.skip_special_tokens) == (
        3,
        "add",
        -2.5,
        True,
    )
    assert first.raw_value == 4.0 * sae.max_activation_of(5)


def test_an_sae_the_replica_lacks_is_named(demo):
    model, sae = demo
    request = build_request(model, "hi", SteeringPlan((FeatureEdit(sae, 1, "add", 1.0),)))
    data = dumps(request, model, {"demo": sae})
    with pytest.raises(
        WireError, match=r"SAE 'demo' is not loaded on this replica \(has: \['x'\]\)"
    ):
        loads(data, model, {"x": sae})
    stranger = random_sae(128, 32, layer=1)
    with pytest.raises(WireError, match="is not one the server has loaded"):
        dumps(SteeringPlan((FeatureEdit(stranger, 1, "add", 1.0),)), model, {"demo": sae})


def test_a_job_runs_on_the_replicas_model_with_the_same_result(demo):
    model, sae = demo
    ids = tuple(model.tokenizer("the bridge in the fog")["input_ids"])
    prompt = PromptTokens(ids, tuple(range(1, len(ids))))
    job = partial(prompt_means, model, sae, prompt)
    weightless = load_service(ServeConfig(), backend=lambda service: None)
    sent = dumps(
        partial(prompt_means, weightless.model, weightless.saes["demo-sae"], prompt),
        weightless.model,
        weightless.resolver.loaded,
    )
    assert len(sent) < 4096
    received = loads(sent, model, {"demo-sae": sae})
    assert received.args[0] is model and received.args[1] is sae
    assert torch.equal(received(), job())


def test_the_entry_model_has_no_weights_and_builds_the_same_requests(demo):
    model, _ = demo
    entry = load_service(ServeConfig(), backend=lambda service: None)
    assert entry.model.device.type == "meta" and model.device.type == "cpu"
    assert all(p.device.type == "meta" for p in entry.model.model.parameters())
    assert (entry.model.num_layers, entry.model.hidden_size, entry.model.context_length) == (
        model.num_layers,
        model.hidden_size,
        model.context_length,
    )
    assert entry.saes["demo-sae"].W_dec.device.type == "cpu"
    assert len(entry.presets) == 6
    plan, _ = entry.plan(entry.preset("Golden Gate Bridge").preset)
    chat = [{"role": "user", "content": "Tell me about your day."}]
    sampling = SamplingParams(max_new_tokens=40)
    ours = build_request(entry.model, chat, plan, sampling, limits=entry.limits)
    theirs = build_request(model, chat, None, sampling)
    assert ours.rows[0].prompt_ids == theirs.rows[0].prompt_ids
    assert ours.sampling == theirs.sampling
    assert [e.raw_value for e in ours.rows[0].plan.edits] == [
        e.raw_value for e in entry.plan(entry.preset("Golden Gate Bridge").preset)[0].edits
    ]


def test_one_process_names_no_replica(demo):
    service = load_service(ServeConfig())
    try:
        with TestClient(create_app(service, page=False)) as client:
            answer = client.post(
                "/v1/chat/completions",
                json={
                    "model": "steering-demo",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                },
            )
        assert answer.status_code == 200 and "x-steering-replica" not in answer.headers
    finally:
        service.close()


def test_replica_options_follow_the_limits_and_autoscaling():
    config = ServeConfig(limits=Limits(max_batch=8, max_waiting=20))
    fixed = replica_deployment_options(config, RayOptions(replicas=3, gpus_per_replica=1))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    assert (fixed["max_ongoing_requests"], fixed["max_queued_requests"]) == (28, 20)
    scaled = replica_deployment_options(
        config, RayOptions(replicas=2, max_replicas=6, target_ongoing_requests=3)
    )
    assert scaled["autoscaling_config"] == {
        "min_replicas": 2,
        "initial_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 3,
    }
    assert "num_replicas" not in scaled
    assert _cores_per_replica(RayOptions(cpus_per_replica=2)) == 2
    assert _cores_per_replica(RayOptions(cpus_per_replica=0.5)) == 0
    assert _cores_per_replica(RayOptions(gpus_per_replica=1)) == 0
    assert _cores_per_replica(RayOptions(address="auto")) == 0


@pytest.mark.parametrize(
    "options, message",
    [
        (RayOptions(replicas=0), r"--replicas 0: use 1..1024 \(leave it out for one process\)"),
        (RayOptions(replicas=4, max_replicas=2), "--max-replicas 2: use 4..1024"),
        (RayOptions(target_ongoing_requests=0), "--target-ongoing-requests 0: use a number > 0"),
        (RayOptions(cpus_per_replica=-1), "--cpus-per-replica -1: use a number from 0 to 1024"),
        (RayOptions(gpus_per_replica=float("nan")), "--gpus-per-replica nan: use a number"),
        (RayOptions(cpus_per_replica=float("inf")), "--cpus-per-replica inf: use a number"),
        (RayOptions(cpus_per_replica=0.00001), "with at most 4 decimals"),
        (RayOptions(target_ongoing_requests=float("inf")), "--target-ongoing-requests inf"),
    ],
)
def test_bad_ray_options_are_named(options, message):
    with pytest.raises(SteeringError, match=message):
        options.check()


def test_replica_flags_without_replicas_are_named(capsys):
    assert main(["serve", "--max-replicas", "3", "--gpus-per-replica", "1"]) == 1
    assert (
        "--max-replicas, --gpus-per-replica apply to replicas on Ray Serve: add --replicas N"
        in (capsys.readouterr().err)
    )


def test_bad_options_fail_before_ray_starts(capsys):
    assert main(["serve", "--replicas", "3", "--max-replicas", "2"]) == 1
    assert "--max-replicas 2: use 3..1024" in capsys.readouterr().err
    with pytest.raises(SteeringError, match=r"unknown argument\(s\) \['gpus'\]"):
        app_builder({"replicas": "2", "gpus": "1"})
    with pytest.raises(SteeringError, match="is not a number"):
        app_builder({"replicas": "two"})


# ---- the entry's backend, against a stand-in for Ray Serve's streaming handle ----


class BackPressureError(Exception):
    """Named as Ray Serve's: its queue in front of the replicas is full."""


class _Stream:
    """A ``DeploymentResponseGenerator``: ``__anext__`` and ``cancel``."""

    def __init__(self, items, fail_cancel=False):
        self.items, self.fail_cancel, self.cancelled = list(items), fail_cancel, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled = True
        if self.fail_cancel:
            raise BackPressureError("again")


class _Handle:
    def __init__(self, make):
        self.make = make
        self.generate = self

    def options(self, **_):
        return self

    def remote(self, payload):
        self.payload = payload
        return self.make()


def _request(demo):
    model, _ = demo
    return build_request(model, "hello", None, SamplingParams(temperature=0, max_new_tokens=2))


def test_a_full_deployment_is_busy_not_an_error(demo):
    model, sae = demo
    handle = _Handle(lambda: _Stream([BackPressureError("dropped")], fail_cancel=True))
    backend = RayBackend(handle, model, {"demo-sae": sae}, wait_s=5)
    try:
        with pytest.raises(Busy, match="every model replica is full"):
            backend.submit(_request(demo))
    finally:
        backend.close()


def test_replica_events_reach_the_reader_and_a_failure_ends_the_rows(demo):
    model, sae = demo
    request = _request(demo)
    events = [
        Event(request.id, 0, "hi", 5, None, 3, 1),
        Event(request.id, 0, "!", 6, "length", 3, 2),
    ]
    backend = RayBackend(
        _Handle(lambda: _Stream(["replica-a", events[:1], events[1:]])), model, {}, wait_s=5
    )
    try:
        stream = backend.submit(request)
        assert stream.served_by == "replica-a" and list(stream) == events
        failing = _Stream(["replica-b", events[:1], RuntimeError("replica died")])
        backend._stream = _Handle(lambda: failing)
        stream = backend.submit(request)
        got = list(stream)
        assert got[0] == events[0] and got[1].finish_reason == "error"
        assert str(got[1].error) == "replica died"
        assert backend.health()["requests_in_flight"] == 0
    finally:
        backend.close()
