"""Plain-text tables and sizes for terminals: the one layout the CLI and manage.py share.

Must never compute anything the library does not already return, nor print: it returns strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from r2migrate.errors import PROBLEM_MEANINGS
from r2migrate.rules.keys import printable_name
from r2migrate.rules.text import human_bytes as human_bytes  # its home; re-exported here

if TYPE_CHECKING:  # annotations only: `r2migrate batches` must not load boto3
    from r2migrate.stages.transfer import RunSummary
    from r2migrate.store.ledger import Batch

MAX_CELL_CHARS = 72
"""Widest cell of a terminal table; longer ones keep their start and end around an ellipsis."""


def human_duration(seconds: float | None) -> str:
    """0.42 -> '0.4 s'; 75 -> '1 min 15 s'; 7300 -> '2 h 1 min'; None -> '-'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def cell(value: object, *, max_chars: int = MAX_CELL_CHARS) -> str:
    """One table cell: control characters and non-UTF-8 bytes escaped, cut in the middle.

    A name keeps its first and last characters (the folder and the extension) around '…'.
    CSV and JSON output never goes through here: they carry the whole name.
    """
    text = printable_name(None if value is None else str(value))
    if len(text) <= max_chars:
        return text
    tail = (max_chars - 1) // 3
    return text[: max_chars - 1 - tail] + "…" + text[len(text) - tail :]


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    max_cell_chars: int = MAX_CELL_CHARS,
) -> list[str]:
    """Left-aligned columns under a dashed rule, one string per line; long cells are cut."""
    cells = [[str(h) for h in headers]] + [
        [cell(c, max_chars=max_cell_chars) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def meanings(codes: str) -> str:
    """The meanings of problem codes as a plan's reason or a CSV cell lists them ('a, b')."""
    found = [c.strip() for c in codes.replace(",", " ").split()]
    return "; ".join(PROBLEM_MEANINGS[c] for c in found if c in PROBLEM_MEANINGS)


def target_label(batch: Batch) -> str:
    """A batch's bucket and location in one short cell: ``media`` or ``media/uploads``."""
    return f"{batch.bucket_name}/{batch.location}" if batch.location else batch.bucket_name


def batch_table(batches: Sequence[Batch]) -> list[str]:
    """The batches listing (the original --list-batches): counts, bytes and upload rate."""
    rows = []
    for b in batches:
        elapsed = (
            (b.completed_at - b.started_at).total_seconds()
            if b.completed_at and b.started_at
            else None
        )
        rate = f"{(b.uploaded_files / elapsed):.0f}/s" if elapsed else "-"
        rows.append(
            (
                b.batch_id,
                target_label(b),
                b.status.value,
                b.total_files,
                b.uploaded_files,
                b.skipped_files,
                b.failed_files,
                b.conflict_files,
                human_bytes(b.uploaded_bytes),
                rate,
            )
        )
    headers = [
        "batch",
        "target",
        "status",
        "files",
        "uploaded",
        "skipped",
        "failed",
        "conflict",
        "bytes",
    ]
    return table([*headers, "rate"], rows)


def run_summary_line(summary: RunSummary) -> str:
    """'Uploaded 40 file(s), 1.2 MiB in 3.1 s (13 files/s); 5 already in the bucket ...':
    wall-clock time, and files settled by HEAD counted apart from those sent."""
    line = (
        f"Uploaded {summary.uploaded} file(s), {human_bytes(summary.bytes_sent)} in "
        f"{summary.elapsed_s:.1f} s"
    )
    if summary.elapsed_s > 0 and summary.uploaded:
        line += f" ({summary.files_per_s:.0f} files/s)"
    if summary.resolved_by_head:
        line += (
            f"; {summary.resolved_by_head} already in the bucket with their SHA-256"
            " (settled by HEAD, not sent again)"
        )
    return line
