"""What the notebooks render with: prose, tables, figures, widgets and progress bars.

Must never hold migration logic nor print a secret.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from r2migrate.report.figures import figure_png
from r2migrate.report.frames import batches_frame
from r2migrate.report.text import human_bytes
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import State

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from r2migrate.stages.transfer import Progress


def say(markdown: str) -> None:
    """Show computed prose (Markdown) as a notebook output; it renders in report.html too."""
    display = importlib.import_module("IPython.display")
    display.display(display.Markdown(markdown))


def show_figure(fig: Figure) -> None:
    """Show a figure as an embedded PNG (works with any matplotlib backend, and headless)."""
    display = importlib.import_module("IPython.display")
    titles = [ax.get_title() for ax in fig.get_axes() if ax.get_title()]
    alt = "; ".join(titles) or "figure"
    display.display(display.Image(data=figure_png(fig), format="png", metadata={"alt": alt}))


def show_table(frame: Any, *, max_rows: int = 50, caption: str | None = None) -> None:
    """A DataFrame as an HTML table: no index, text left-aligned, cut at ``max_rows``."""
    display = importlib.import_module("IPython.display")
    head = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    if not len(frame):
        display.display(display.HTML(head + "<p><i>(none)</i></p>"))
        return
    shown = frame.head(max_rows) if max_rows and len(frame) > max_rows else frame
    text = [c for c in shown.columns if not _numeric(shown[c])]
    styler = (
        shown.style.hide(axis="index")
        .format(precision=2, na_rep="")
        .set_properties(subset=text, **{"text-align": "left"})
        .set_table_styles([{"selector": "th", "props": "text-align: left;"}])
    )
    more = len(frame) - len(shown)
    tail = f"<p><i>… and {more:,} more rows.</i></p>" if more else ""
    display.display(display.HTML(head + styler.to_html() + tail))


def _numeric(column: Any) -> bool:
    return str(column.dtype).lower().startswith(("int", "uint", "float"))


def show_batches(
    state: State, batch_ids: Sequence[str] | None = None, *, caption: str = ""
) -> None:
    """The batches as a compact table: counts, size, and when each finished (UTC)."""
    frame = batches_frame(state, batch_ids)
    frame = frame.assign(
        size=frame["bytes"].map(human_bytes),
        completed=frame["completed_at"].map(_short_time),
    )
    columns = ["batch_id", "status", "files", "uploaded", "verified", "skipped", "failed"]
    show_table(frame[[*columns, "conflict", "size", "completed"]], caption=caption or None)


def _short_time(at: object) -> str:
    if not isinstance(at, datetime) or at != at:  # pandas' NaT is a datetime unequal to itself
        return ""
    return at.strftime("%Y-%m-%d %H:%M:%S")


_SAFE_SETTINGS = (
    "bucket_name",
    "location",
    "endpoint_url",
    "region_name",
    "media_root",
    "references",
    "state_schema",
    "batch_size",
    "workers",
)


def show_settings(settings: Settings) -> None:
    """A small table of the settings a reader needs (bucket, endpoint, folder); no secret."""
    pd = importlib.import_module("pandas")
    frame = pd.DataFrame(settings_rows(settings), columns=["setting", "value"])
    show_table(frame, caption="Settings used (secrets are never shown)")


def batch_picker(options: Sequence[str], render: Callable[[list[str] | None], None]) -> None:
    """In JupyterLab: a dropdown of batches (plus "all") that re-renders ``render(ids)``."""
    widgets = importlib.import_module("ipywidgets")
    display = importlib.import_module("IPython.display")
    picker = widgets.Dropdown(options=["(all)", *options], description="Batch")
    out = widgets.Output()

    def refresh(_: object = None) -> None:
        out.clear_output()
        with out:
            render(None if picker.value == "(all)" else [picker.value])

    picker.observe(refresh, names="value")
    refresh()
    display.display(widgets.VBox([picker, out]))


def settings_rows(settings: Settings) -> list[tuple[str, str]]:
    """A few settings worth showing in a report, from ``redacted()``: never a secret."""
    shown = settings.redacted()
    derived = {
        "endpoint_url": settings.effective_endpoint_url,
        "region_name": settings.effective_region_name,
    }
    rows = []
    for name in _SAFE_SETTINGS:
        value = shown.get(name)
        if value is None and derived.get(name):
            value = f"{derived[name]} (derived)"
        rows.append((name, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


@dataclass
class BatchProgressView:
    """``on_progress`` for ``run``: a tqdm bar per batch in JupyterLab, plain lines headless.

    Plain mode prints one line when a batch starts, at each quarter and when it ends, so
    report.html shows the run without a wall of updates.
    """

    plain: bool
    _batch: str | None = None
    _bar: Any = None
    _next_quarter: int = 1

    def __call__(self, p: Progress) -> None:
        if p.batch_id != self._batch:
            self.close()
            self._batch = p.batch_id
            self._next_quarter = 1
            if self.plain:
                self._print(
                    f"batch {p.batch_id}: {p.files_total} files, {human_bytes(p.bytes_total)}"
                )
            else:
                tqdm = importlib.import_module("tqdm.auto").tqdm
                self._bar = tqdm(total=p.files_total, desc=p.batch_id, unit="file")
                self._bar.update(p.files_done)
                return
        if self._bar is not None:
            self._bar.update(max(0, p.files_done - self._bar.n))
            return
        total = max(1, p.files_total)
        while self._next_quarter <= 4 and p.files_done * 4 >= self._next_quarter * total:
            self._print(
                f"  {p.files_done}/{p.files_total} files, {human_bytes(p.bytes_done)} "
                f"of {human_bytes(p.bytes_total)}"
            )
            self._next_quarter += 1

    def _print(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
