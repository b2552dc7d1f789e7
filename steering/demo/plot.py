"""The Golden Gate curve as a PNG: share of replies that bring in the bridge (red) and of
well-formed replies (blue) against the multiplier (evenly spaced), drawn by
``steering.features.report.line_chart`` (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from ..features.report import line_chart


def draw_curve(points: list[dict[str, float]], path: Path) -> None:
    """A line chart of ``points`` (multiplier -> "bridge" and "well_formed" rates) written to
    ``path`` as PNG."""
    line_chart(
        [p["multiplier"] for p in points],
        {
            "concept (bridge)": [p["bridge"] for p in points],
            "well-formed": [p["well_formed"] for p in points],
        },
        path,
        xlabel="multiplier (x max activation of features 660 and 704, prompt tokens)",
    )
