"""The benchmark runs end to end on a tiny model and writes its JSON contract (no timing checks)."""

from __future__ import annotations

import json
import math

import steering.bench.__main__ as bench_main
from steering.bench import measure as bench
from steering.bench.setup import Settings

TINY = dict(
    hidden=64,
    layers=4,
    heads=4,
    intermediate=128,
    vocab=256,
    sae_width=512,
    prompt_words=6,
    hook_prefill_tokens=8,
)


def test_quick_bench_on_a_tiny_model_writes_every_ratio(tmp_path, capsys):
    settings = Settings.quick(**TINY, new_tokens=4, users_new_tokens=3, warmup_tokens=2)
    result = bench.run(settings)
    bench.check(result)
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(result))
    loaded = json.loads(out.read_text())
    for key in (*bench.KEYS, "steer_overhead_1", "steer_overhead_8"):
        value = loaded[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    assert loaded["steer_overhead"] == loaded["steer_overhead_8"]
    details = loaded["details"]
    assert details["settings"]["hidden"] == 64
    assert details["single_row"]["engine_matches_hf_greedy"] is True
    assert set(details["single_row"]["tokens_per_s"]) == {
        "unsteered",
        "clamp1",
        "clamp8",
        "ab_compare",
        "hf_generate",
    }
    printed = bench.table(result)
    for key, *_ in bench.TARGETS:
        assert key in printed


def test_main_parses_flags_and_writes_the_file(tmp_path, monkeypatch):
    runs = []

    def fake_run(settings):
        runs.append(settings)
        ratios = {k: 1.0 for k in (*bench.KEYS, "steer_overhead_1", "steer_overhead_8")}
        return {**ratios, "details": _fake_details()}

    monkeypatch.setattr(bench_main, "run", fake_run)
    out = tmp_path / "r.json"
    argv = ["--quick", "--repeats", "3", "--new-tokens", "5", "--out", str(out)]
    assert bench_main.main(argv) == 0
    assert runs[0].repeats == 3 and runs[0].new_tokens == 5
    assert json.loads(out.read_text())["ab_vs_single"] == 1.0


def _fake_details():
    return {
        "single_row": {
            "tokens_per_s": {"unsteered": 1.0},
            "ms_per_step": {"unsteered": 1.0},
            "new_tokens": 5,
            "engine_matches_hf_greedy": True,
        },
        "users": {"users": 8, "tokens_per_s": {"batched": 1.0}},
        "hook": {"microseconds": {"decode_1x1": {"a": 1.0}, "prefill_1xT": {"a": 1.0}}},
        "linear_us": {"x": {"M=1": 1.0}},
        "wall_s": 1.0,
    }
