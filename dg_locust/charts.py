"""Charts of a run's history as images for the report, drawn with matplotlib (SVG inline, PNG beside the page).

Each function takes the history as ``RunHistory.export()`` gives it and returns a matplotlib ``Figure`` (no pyplot,
so no global figure state), or None when there is nothing to draw:

- ``main_chart``: three panels on one time axis: rows/s (acknowledged, failed, in doubt), batch size (current,
  best) and insert latency (p50, p95, p99);
- ``workers_chart``: acknowledged rows/s per worker (distributed runs);
- ``class_chart``: rows/s and batch size of one user class (runs with several classes).

``svg(figure)`` and ``png(figure)`` render one. Every line carries the SVG id ``line_id(series key)``
(``dg-total-inserted_per_s``), so a reader of the SVG can find it. matplotlib is imported here only, and this
module only when a report is written.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

OUTCOME_LINES = (
    ("inserted_per_s", "Acknowledged", "#00a84a"),
    ("failed_per_s", "Failed", "#e53935"),
    ("in_doubt_per_s", "In doubt", "#fb8c00"),
)
SIZE_LINES = (("batch_size", "Current", "#1e88e5"), ("best_batch_size", "Best", "#8e24aa"))
LATENCY_LINES = (
    ("latency/p50", "50th percentile", "#00a84a"),
    ("latency/p95", "95th percentile", "#fb8c00"),
    ("latency/p99", "99th percentile", "#e53935"),
)
WORKER_COLORS = ("#1e88e5", "#00a84a", "#fb8c00", "#8e24aa", "#e53935", "#00897b", "#6d4c41", "#3949ab")
RC = {
    "svg.fonttype": "none",  # text stays text: smaller, searchable
    "svg.hashsalt": "dg-locust",  # the same history gives the same SVG
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def main_chart(history: dict) -> Figure | None:
    if not history.get("time"):
        return None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(10, 8), layout="constrained")
        rows, sizes, latency = figure.subplots(3, 1, sharex=True)
        _lines(rows, history, [(f"total/{key}", name, color) for key, name, color in OUTCOME_LINES])
        _decorate(rows, "Rows/s", "rows/s")
        _lines(sizes, history, [(f"total/{key}", name, color) for key, name, color in SIZE_LINES])
        _decorate(sizes, "Batch size", "rows")
        _lines(latency, history, LATENCY_LINES)
        _decorate(latency, "Insert latency", "ms")
        _time_axis(latency, history)
        figure.suptitle("dg-locust: rows/s, batch size and insert latency", fontweight="bold")
    return figure


def workers_chart(history: dict) -> Figure | None:
    workers = [group for group in history.get("groups", []) if group["kind"] == "worker"]
    if not workers or not history.get("time"):
        return None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(10, 3.6), layout="constrained")
        axes = figure.subplots()
        lines = [
            (f"{group['key']}/inserted_per_s", group["label"], WORKER_COLORS[index % len(WORKER_COLORS)])
            for index, group in enumerate(workers)
        ]
        _lines(axes, history, lines)
        _decorate(axes, "Rows/s per worker (acknowledged)", "rows/s")
        _time_axis(axes, history)
    return figure


def class_chart(history: dict, group: dict) -> Figure | None:
    if not history.get("time"):
        return None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(10, 5), layout="constrained")
        rows, sizes = figure.subplots(2, 1, sharex=True)
        _lines(rows, history, [(f"{group['key']}/{key}", name, color) for key, name, color in OUTCOME_LINES])
        _decorate(rows, f"Rows/s of {group['label']}", "rows/s")
        _lines(sizes, history, [(f"{group['key']}/{key}", name, color) for key, name, color in SIZE_LINES])
        _decorate(sizes, f"Batch size of {group['label']}", "rows")
        _time_axis(sizes, history)
    return figure


def svg(figure: Figure) -> str:
    """The figure as an SVG element (no XML prolog), to put inline in an HTML page."""
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="svg", metadata=dict.fromkeys(("Creator", "Date", "Format", "Type")))
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _lines(axes, history: dict, lines: Sequence[tuple[str, str, str]]) -> None:
    elapsed = [t - history["started_at"] for t in history["time"]]
    for key, name, color in lines:
        values = [math.nan if v is None else v for v in history["series"].get(key, [])]
        if not values:
            continue
        (line,) = axes.plot(elapsed, values, label=name, color=color, linewidth=1.4)
        line.set_gid(line_id(key))


def line_id(key: str) -> str:
    """The SVG id of a series' line: ``dg-`` and the key, with anything but letters, digits, _ and - as -."""
    return "dg-" + re.sub(r"[^A-Za-z0-9_-]", "-", key)


def _decorate(axes, title: str, unit: str) -> None:
    axes.set_title(title, loc="left", fontweight="bold")
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    if axes.get_legend_handles_labels()[0]:
        # above the plot, right of the title, so it never hides a line
        axes.legend(loc="lower right", bbox_to_anchor=(1, 1), frameon=False, ncols=8, borderaxespad=0.2)


def _time_axis(axes, history: dict) -> None:
    axes.set_xlabel("time since the test started (min:s)")
    axes.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 3, 5, 6, 10]))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda seconds, _pos: f"{int(seconds // 60)}:{int(seconds % 60):02d}"))
    axes.set_xlim(left=0)
