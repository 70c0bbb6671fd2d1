"""What the notebooks render with: prose, tables, figures, widgets and progress bars.

Must never hold migration logic nor print a secret.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r2migrate.report.figures import figure_png
from r2migrate.report.frames import batches_frame
from r2migrate.report.text import human_bytes, human_duration
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import State

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from r2migrate.stages.transfer import Progress, RunSummary


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
    shown = frame[[*columns, "conflict", "size", "completed"]].rename(
        columns={"batch_id": "batch", "conflict": "conflicts", "completed": "completed (UTC)"}
    )
    show_table(shown, caption=caption or None)


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


# Size bands of the explorer's size filter: (label, lowest size, first size above the band).
SIZE_BANDS = (
    ("under 1 KiB", 0, 1 << 10),
    ("1 KiB to 1 MiB", 1 << 10, 1 << 20),
    ("1 MiB to 100 MiB", 1 << 20, 100 << 20),
    ("100 MiB and more", 100 << 20, None),
)
_ALL = "(all)"
LIST_SEP = " | "  # between the values of one cell that a filter tells apart (report.frames')


def _choices(column: Any) -> list[str]:
    """A filter's options: the column's values, a ``" | "``-separated list counting as several."""
    found = {part for value in column.dropna() for part in str(value).split(LIST_SEP) if part}
    return [_ALL, *sorted(found)]


def filter_frame(
    frame: Any, choices: dict[str, str], size_column: str | None, band: str = _ALL
) -> Any:
    """The rows of ``frame`` whose columns hold each chosen value (``(all)``: any) and whose
    ``size_column`` falls in the size band named ``band``."""
    keep = frame.index == frame.index  # every row
    for column, wanted in choices.items():
        if wanted != _ALL:
            keep &= frame[column].map(lambda v, w=wanted: w in str(v).split(LIST_SEP))
    for label, low, high in SIZE_BANDS:
        if size_column is not None and band == label:
            sizes = frame[size_column].fillna(-1)
            keep &= (sizes >= low) & ((sizes < high) if high is not None else True)
    return frame[keep]


def explore_table(
    frame: Any,
    *,
    shown: Sequence[str],
    filters: dict[str, str],
    size_column: str | None = None,
    interactive: bool,
    max_rows: int = 200,
    caption: str | None = None,
) -> None:
    """In JupyterLab, a table with a dropdown per ``filters`` entry (label -> column: by
    problem, by folder...) and one of size bands; elsewhere (report.html), the static table.

    Only ``shown`` columns are displayed; the filters may read others.
    """
    if not interactive or not len(frame):
        show_table(frame[list(shown)], max_rows=max_rows, caption=caption)
        return
    widgets = importlib.import_module("ipywidgets")
    display = importlib.import_module("IPython.display")
    pickers = {
        column: widgets.Dropdown(options=_choices(frame[column]), description=label)
        for label, column in filters.items()
    }
    if size_column is not None:
        bands = [_ALL, *(label for label, _, _ in SIZE_BANDS)]
        size_picker = widgets.Dropdown(options=bands, description="Size")
    out = widgets.Output()

    def refresh(_: object = None) -> None:
        chosen = {column: str(p.value) for column, p in pickers.items()}
        band = str(size_picker.value) if size_column is not None else _ALL
        rows = filter_frame(frame, chosen, size_column, band)
        out.clear_output()
        with out:
            show_table(rows[list(shown)], max_rows=max_rows, caption=caption)

    controls = list(pickers.values()) + ([size_picker] if size_column is not None else [])
    for control in controls:
        control.observe(refresh, names="value")
    refresh()
    display.display(widgets.VBox([widgets.HBox(controls), out]))


def run_table(summary: RunSummary) -> Any:
    """A run's batches as a reader wants them: what was sent, what was already there, what
    failed, the size sent, the time taken and the speed, in words and units."""
    pd = importlib.import_module("pandas")
    rows = [
        (
            b.batch_id,
            _RUN_STATUS.get(b.status.value, b.status.value),
            b.uploaded,
            b.skipped + b.resolved_by_head,
            b.failed + b.conflict,
            human_bytes(b.bytes_sent),
            human_duration(b.elapsed_s),
            f"{b.files_per_s:,.0f} files/s, {human_bytes(b.bytes_sent / b.elapsed_s)}/s"
            if b.elapsed_s > 0
            else "",
        )
        for b in summary.batches
    ]
    columns = ["batch", "result", "files sent", "already in the bucket", "failed"]
    return pd.DataFrame(rows, columns=[*columns, "size sent", "time", "speed"])


_RUN_STATUS = {
    "completed": "done",
    "failed": "finished, some files failed",
    "partial": "stopped part-way: run again to finish",
    "running": "interrupted",
    "planned": "not started",
}


@dataclass
class BatchProgressView:
    """``on_progress`` for ``run``: a tqdm bar per batch in JupyterLab, plain lines headless.

    Plain mode writes one line when a batch starts and at each quarter of it to ``log_path``
    (``progress.log`` beside results.json): the run's log, kept out of report.html. Without a
    ``log_path`` the lines are printed.
    """

    plain: bool
    log_path: Path | None = None
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
        if self.log_path is None:
            print(line, flush=True)
            return
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
