"""Strength sweeps on the service: one request, a row per multiplier, each row the reply of
that strength alone; every bad multiplier refused by name before anything runs."""

from __future__ import annotations

import math

import pytest
from live_server import PRESET_NAME, golden_gate_preset, tiny_service

from steering.errors import LimitError, PresetError, RequestError
from steering.limits import Limits
from steering.presets.schema import NamedPresets, PresetRef, parse_preset
from steering.requests import collect
from steering.sampling import SamplingParams

CHAT = [{"role": "user", "content": "hello how are you"}]
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=2)


def named(scale: float = 1.0) -> NamedPresets:
    return NamedPresets(presets=[PresetRef(name=PRESET_NAME, scale=scale)])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    limits = Limits(max_multiple=50, max_sweep_rows=6, max_batch=8)
    service = tiny_service(tmp_path_factory.mktemp("sweep"), limits)
    yield service
    service.close()


def texts(handle, rows: int) -> list[str]:
    replies = collect(handle, rows)
    assert all(r.finish_reason == "length" for r in replies)
    return [r.text for r in replies]


def test_each_row_is_the_reply_of_its_strength_alone(service):
    scales = [0.0, 1.0, 2.0, 4.0, 1.0]
    handle = service.sweep(CHAT, named(0.5), scales, SAMPLED)
    assert len(handle.request.rows) == 5 and handle.request.rows[0].plan is None
    rows = texts(handle, 5)
    for scale, text in zip(scales, rows):
        plan, _ = service.plan(named(0.5 * scale))
        assert texts(service.submit(CHAT, plan, SAMPLED), 1) == [text]
    plain = texts(service.submit(CHAT, service.plan(None)[0], SAMPLED), 1)[0]
    assert rows[0] == plain and rows[1] == rows[4]
    assert len(set(rows)) >= 3  # the strengths really differ


def test_an_inline_preset_sweeps_the_same_way(service):
    preset = golden_gate_preset(value=2.0)
    preset["saes"][0]["ref"] = "tiny-sae"
    inline = parse_preset(preset, "steering")
    rows = texts(service.sweep(CHAT, inline, [0.0, 5.0], SAMPLED), 2)
    by_name = texts(service.sweep(CHAT, named(1.0), [0.0, 1.0], SAMPLED), 2)
    assert rows == by_name  # value 2 x 5 is the preset's value 10 x 1


@pytest.mark.parametrize(
    "scales, error, words",
    [
        ([], RequestError, "sweep: give at least one multiplier"),
        ([0, 1, 2, 3, 4, 5, 6], LimitError, "sweep: 7 multipliers, at most 6 (max_sweep_rows)"),
        ([0, math.nan], RequestError, "sweep.1: nan is not a finite number"),
        ([math.inf], RequestError, "sweep.0: inf is not a finite number"),
        ([1, True], RequestError, "sweep.1: True is not a number"),
        ([1, 2, 6], LimitError, "sweep.2: multiplier 6: Golden Gate Bridge: edits.0: value 10"),
        ([-6], LimitError, "over this server's limit of 50"),
        ([1000], LimitError, "sweep.0: multiplier 1000: scale: 1000.0 must be a finite number"),
    ],
)
def test_bad_multipliers_are_named(service, scales, error, words):
    with pytest.raises(error) as caught:
        service.sweep(CHAT, named(), scales, SAMPLED)
    assert words in str(caught.value) and caught.value.param == "sweep"
    assert service.health()["running_rows"] == 0 and service.health()["waiting"] == 0


def test_no_steering_or_a_bad_one_is_refused_as_such(service):
    with pytest.raises(RequestError, match="sweep: needs a steering") as caught:
        service.sweep(CHAT, None, [0, 1], SAMPLED)
    assert caught.value.param == "sweep"
    with pytest.raises(PresetError, match="no preset named 'nope'") as caught:
        service.sweep(CHAT, NamedPresets(presets=[PresetRef(name="nope")]), [0, 1], SAMPLED)
    assert caught.value.param == "steering"


def test_a_sweep_wider_than_the_batch_is_refused_not_queued(tmp_path):
    service = tiny_service(tmp_path, Limits(max_batch=2, max_sweep_rows=8))
    try:
        with pytest.raises(LimitError) as caught:
            service.sweep(CHAT, named(), [0, 1, 2], SAMPLED)
        assert str(caught.value) == (
            "sweep: 3 multipliers are 3 rows, but this server decodes at most 2 rows together "
            "(max_batch)"
        )
        assert texts(service.sweep(CHAT, named(), [0, 1], SAMPLED), 2)  # two rows fit
    finally:
        service.close()
