"""matplotlib figures for the reports, built without pyplot (no global state, no GUI).

Must never read the state itself: it draws what frames and summaries hand it.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from r2migrate.stages.inventory import (
    InventorySummary,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


DataFrame = Any  # a pandas.DataFrame (untyped)

# -- figures -----------------------------------------------------------------------------------


def _figure(width_in: float = 8.0, height_in: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (what the notebooks embed; needs no display or GUI backend)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def bar_figure(
    counts: Mapping[str, float],
    *,
    title: str,
    xlabel: str = "files",
    log: bool = False,
    by_value: bool = True,
) -> Figure:
    """Horizontal bars, one per key, the value written at each bar's end: largest on top, or
    (``by_value=False``) in the mapping's order from the top (years, sizes)."""
    fig = _figure(height_in=max(1.6, 0.45 * len(counts) + 1.0))
    ax = fig.add_subplot()
    items = sorted(counts.items(), key=lambda kv: kv[1]) if by_value else [*counts.items()][::-1]
    labels = [k for k, _ in items]
    values = [v for _, v in items]
    bars = ax.barh(labels, values, color="#2b6cb0")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
    if log and any(v > 0 for v in values):
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)
    if not items:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
    return fig


def size_histogram_figure(summary: InventorySummary) -> Figure:
    """Migratable files per size band (log-scaled count axis): where the bytes and requests go."""
    fig = _figure()
    ax = fig.add_subplot()
    labels = [label for label, _ in summary.size_histogram]
    values = [n for _, n in summary.size_histogram]
    bars = ax.bar(range(len(labels)), values, color="#2f855a")
    ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    if any(values):
        ax.set_yscale("log")
    ax.set_ylabel("files (log scale)")
    ax.set_title("Migratable files by size")
    return fig


def progress_figure(frame: DataFrame) -> Figure:
    """Cumulative files uploaded and proven over time (from ``progress_frame``)."""
    fig = _figure()
    ax = fig.add_subplot()
    if len(frame):
        ax.step(frame["at"], frame["files_uploaded"], where="post", label="uploaded")
        if frame["files_proven"].iloc[-1] > 0:
            ax.step(frame["at"], frame["files_proven"], where="post", label="proven by verify")
        ax.legend(loc="upper left")
        dates: Any = importlib.import_module("matplotlib.dates")  # untyped in matplotlib
        locator = dates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    else:
        ax.text(0.5, 0.5, "nothing uploaded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("files (cumulative)")
    ax.set_title("Progress over time (UTC)")
    return fig
