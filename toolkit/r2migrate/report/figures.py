"""matplotlib figures for the reports, built without pyplot (no global state, no GUI).

Must never read the state itself: it draws what frames and summaries hand it.
"""

from __future__ import annotations

import importlib
import io
import textwrap
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


# Colour by meaning: proven green, needing a person red, not (yet) checked grey.
PROVEN_GREEN = "#2f855a"
FAILED_RED = "#c53030"
NEUTRAL_GREY = "#a0aec0"
PLAIN_BLUE = "#2b6cb0"


def bar_figure(
    counts: Mapping[str, float],
    *,
    title: str,
    xlabel: str = "files",
    log: bool = False,
    by_value: bool = True,
    colors: Mapping[str, str] | None = None,
    wrap: int = 44,
) -> Figure:
    """Horizontal bars, one per key, the value written at each bar's end: largest on top, or
    (``by_value=False``) in the mapping's order from the top (years, sizes). ``colors`` maps a
    key to its bar's colour (blue otherwise). Labels longer than ``wrap`` characters are
    wrapped onto more lines."""
    items = sorted(counts.items(), key=lambda kv: kv[1]) if by_value else [*counts.items()][::-1]
    labels = [textwrap.fill(str(k), wrap) for k, _ in items]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig = _figure(height_in=max(1.6, 0.3 * lines + 0.15 * len(labels) + 1.0))
    ax = fig.add_subplot()
    values = [v for _, v in items]
    shades = [(colors or {}).get(k, PLAIN_BLUE) for k, _ in items]
    bars = ax.barh(labels, values, color=shades)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
    if log and any(v > 0 for v in values):
        ax.set_xscale("log")
    else:
        ticker: Any = importlib.import_module("matplotlib.ticker")  # untyped in matplotlib
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)
    if not items:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
    return fig


def size_histogram_figure(summary: InventorySummary) -> Figure:
    """Migratable files per size band, smallest band on top, each count written at its bar's
    end (a linear axis: a count reads as a count, and the margin keeps every label inside)."""
    counts = {label: n for label, n in summary.size_histogram}
    return bar_figure(
        counts,
        title="Migratable files by size",
        by_value=False,
        colors=dict.fromkeys(counts, PROVEN_GREEN),
    )


def progress_figure(frame: DataFrame) -> Figure:
    """Cumulative files uploaded and proven over time (from ``progress_frame``), against the
    time since the first upload (seconds for a run of a few minutes, else minutes), with that
    first upload's clock time (UTC) in the axis label."""
    fig = _figure()
    ax = fig.add_subplot()
    if len(frame):
        first = frame["at"].iloc[0]
        elapsed_s = [(at - first).total_seconds() for at in frame["at"]]
        scale, unit = (60.0, "minutes") if elapsed_s[-1] > 180 else (1.0, "seconds")
        x = [t / scale for t in elapsed_s]
        ax.step(x, frame["files_uploaded"], where="post", label="uploaded", color=PLAIN_BLUE)
        if frame["files_proven"].iloc[-1] > 0:
            ax.step(
                x, frame["files_proven"], where="post", label="proven identical", color=PROVEN_GREEN
            )
        ax.legend(loc="lower right")
        ax.set_xlabel(f"{unit} since the first upload ({first:%Y-%m-%d %H:%M:%S} UTC)")
    else:
        ax.text(0.5, 0.5, "nothing uploaded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("files (cumulative)")
    ax.set_title("Progress over time")
    return fig
