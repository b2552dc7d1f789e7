"""A bounded soak over loopback (``python -m steering.bench.soak`` at a size CI can afford):
nothing leaks and the reference reply holds."""

from __future__ import annotations

from live_server import tiny_service

from steering.bench.soak import run


def test_a_thousand_mixed_requests_leave_nothing_behind(tmp_path):
    report = run(tiny_service(tmp_path), requests=1000, clients=16, max_seconds=300)
    print(report.table())
    assert sum(report.outcomes.values()) == 1000 and not report.outcomes["not sent (time)"]
    assert report.server_errors == 0
    assert (report.hooks_left, report.rows_left, report.waiting_left) == (0, 0, 0)
    assert report.threads_end <= report.threads_idle + 4  # a leak would add one per request
    assert report.reference_equal
    assert report.rss_end_mb - report.rss_warm_mb < 200  # levels off once warm
    answered = {k.split(": ")[1] for k in report.outcomes}
    expected = {"200", "400", "200 dropped", "429", "page ok", "page cancelled"}
    assert answered <= expected, report.outcomes
