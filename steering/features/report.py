"""How a sweep is reported: a table for people (``format_table``), CSV (``to_csv``), JSON
(``to_json``), and a PNG line chart of rates against the multipliers (``plot_sweep``, drawn by
``line_chart`` with matplotlib: Agg backend, imported only when a chart is drawn, so the command
line starts fast).

The x axis places the multipliers evenly, labelled with their values (they often grow
geometrically, 0 to 1000); rates are on a 0..1 axis, fluency (nats/token) on its own axis at
the right.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sweep import SweepResult

COLORS = {"concept": "#c81e1e", "well-formed": "#1e50c8", "fluency": "#2a8a3a"}


def line_chart(
    multipliers: Sequence[float],
    rates: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "multiplier",
    right: tuple[str, Sequence[float]] | None = None,
    mark: float | None = None,
) -> None:
    """Write a PNG to ``path``: each of ``rates`` (name -> one share in 0..1 per multiplier)
    as a line, ``right`` (name, values) on a second y axis, and a dotted line at the multiplier
    ``mark`` (e.g. the suggested one)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    xs = list(range(len(multipliers)))
    for name, values in rates.items():
        color = COLORS.get(name.split(" ")[0])
        ax.plot(xs, list(values), marker="o", linewidth=2, label=name, color=color)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("share of replies")
    ax.set_xticks(xs, [f"{m:g}" for m in multipliers])
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", color="#dddddd")
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        twin = ax.twinx()
        name, values = right
        twin.plot(xs, list(values), linestyle="--", marker="s", label=name, color=COLORS["fluency"])
        twin.set_ylabel(name)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if mark is not None and mark in multipliers:
        ax.axvline(list(multipliers).index(mark), color="#888888", linestyle=":")
    ax.legend(handles, labels, loc="lower right", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(Path(path), format="png")


def plot_sweep(result: SweepResult, path: str | Path) -> None:
    """A sweep's concept and well-formed rates and its fluency against the multiplier, the
    suggested multiplier marked, as a PNG at ``path``."""
    points = result.points
    line_chart(
        [p.multiplier for p in points],
        {
            f"concept ({result.concept})": [p.concept_rate for p in points],
            "well-formed": [p.well_formed for p in points],
        },
        path,
        title=f"{prompt_count(result)} per multiplier; suggested: "
        + ("none" if result.suggested is None else f"{result.suggested:g}"),
        xlabel=f"multiplier ({result.unit}); evenly spaced, not to scale",
        right=("fluency (nats/token, lower is better)", [p.fluency for p in points]),
        mark=result.suggested,
    )


def prompt_count(result: SweepResult) -> str:
    """ "1 prompt", "60 prompts" ("? prompts" when the settings do not say)."""
    n = result.settings.get("prompts", "?")
    return f"{n} prompt{'' if n == 1 else 's'}"


COLUMNS = ("multiplier", "concept_rate", "fluency", "well_formed", "replies")


def format_table(result: SweepResult) -> str:
    """The sweep as a table for people, with what a multiplier means and the suggestion."""
    lines = [
        f"multiplier: {result.unit}; concept: {result.concept}; {prompt_count(result)}",
        f"{'multiplier':>10}  {'concept':>7}  {'fluency':>14}  {'well-formed':>11}",
    ]
    for p in result.points:
        mark = "  <- suggested" if p.multiplier == result.suggested else ""
        lines.append(
            f"{p.multiplier:>10g}  {p.concept_rate:>7.1%}  {p.fluency:>8.3f} nat/t  "
            f"{p.well_formed:>11.1%}{mark}"
        )
    if result.suggested is None:
        lines.append(f"suggested: none: {result.reason}")
    else:
        lines.append(f"suggested: {result.suggested:g}: {result.reason}")
    return "\n".join(lines)


def to_csv(result: SweepResult) -> str:
    """One row per multiplier: ``COLUMNS`` (rates as shares 0..1, fluency in nats/token)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in result.points:
        writer.writerow([repr(getattr(p, c)) if c != "replies" else p.replies for c in COLUMNS])
    return out.getvalue()


def to_json(result: SweepResult, replies: bool = True) -> dict[str, Any]:
    """The sweep as a JSON object: settings, points, the suggestion and, with ``replies``,
    every reply (prompt index, multiplier, text, finish reason)."""
    data: dict[str, Any] = {
        "unit": result.unit,
        "concept": result.concept,
        "fluency_bound": result.fluency_bound,
        "well_formed_drop": result.well_formed_drop,
        **result.settings,
        "points": [{c: getattr(p, c) for c in COLUMNS} for p in result.points],
        "suggested": result.suggested,
        "reason": result.reason,
    }
    if replies:
        data["replies"] = [
            {
                "prompt": r.prompt,
                "multiplier": r.multiplier,
                "text": r.text,
                "finish_reason": r.finish_reason,
            }
            for r in result.replies
        ]
    return data
