"""The load test's arithmetic: percentiles, mismatches against solo replies, errors by kind,
the Ray-over-direct ratios and the table (the servers it starts are exercised by
``make load``; ``tests/ray_serve`` tests the same server)."""

from __future__ import annotations

from steering.bench.load import LEVELS, Outcome, mix, percentiles, ratios, summarize, table


def test_percentiles_are_nearest_rank():
    xs = [float(i) for i in range(1, 101)]  # 1..100 s
    assert percentiles(xs) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([0.25]) == {"p50": 0.25, "p95": 0.25, "p99": 0.25}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_summary_counts_tokens_errors_and_mismatches():
    solo = [["a b"], ["c", "d"]]
    outcomes = [
        Outcome(0, ["a b"], tokens=10, ttft=0.1, latency=1.0, replica="r1"),
        Outcome(1, ["c", "d"], tokens=20, ttft=0.2, latency=2.0, replica="r2"),
        Outcome(1, ["c", "x"], tokens=20, ttft=0.3, latency=3.0, replica="r2"),  # differs
        Outcome(0, [], error="HTTP 429"),
        Outcome(0, [], error="HTTP 429"),
        Outcome(1, [], error="stream error"),
    ]
    s = summarize(outcomes, 10.0, solo)
    assert (s["requests"], s["completed"], s["mismatches"], s["replicas_used"]) == (6, 3, 1, 2)
    assert s["completion_tokens_per_s"] == 5.0 and s["requests_per_s"] == 0.3
    assert s["errors"] == {"HTTP 429": 2, "stream error": 1}
    assert s["latency_s"]["p50"] == 2.0 and s["ttft_s"]["p99"] == 0.3


def test_ratios_and_table():
    def level(tok: float, p50: float) -> dict:
        return {
            "completion_tokens_per_s": tok,
            "requests_per_s": 1.0,
            "ttft_s": {"p50": 0.1, "p95": 0.2, "p99": 0.3},
            "latency_s": {"p50": p50, "p95": p50, "p99": p50},
            "errors": {},
            "mismatches": 0,
        }

    results = {
        "own": {"target": "direct", "1": level(100.0, 0.5), "8": level(400.0, 1.0)},
        "own-ray1": {"target": "ray", "1": level(80.0, 0.6), "8": level(200.0, 2.0)},
    }
    assert ratios(results) == {
        "own_ray1_vs_direct_latency_p50_c1": 1.2,
        "own_ray1_vs_direct_tokens_per_s_c1": 0.8,
        "own_ray1_vs_direct_latency_p50_c8": 2.0,
        "own_ray1_vs_direct_tokens_per_s_c8": 0.5,
    }
    rows = table(results).splitlines()
    assert len(rows) == 2 + 4 and rows[2].startswith("| direct | 1 | 100.0 | 1.00 |")


def test_the_mix_has_every_kind_of_request():
    bodies = mix()
    assert len(bodies) == 12 and LEVELS == (1, 8, 32, 64)
    assert sum(1 for b in bodies if "steering" not in b) == 2
    assert sum(1 for b in bodies if b.get("compare")) == 4
    assert all(b["temperature"] == 0 and b["stream"] for b in bodies)
