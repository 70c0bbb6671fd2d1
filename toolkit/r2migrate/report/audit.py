"""The audit report files (``files.csv``, ``summary.json``, ``manifest.json``), and the one
import path for every read-only view of the state.

Must never write the toolkit's tables or touch the bucket or the source files. The only files it
writes are the audit report files, into a folder that holds nothing yet (an existing report is
never overwritten). The views live beside it, one concern each: ``rows`` (the ledger read back,
and each file's verdict), ``summary`` (counts, cost, the verdict sentence), ``frames`` (pandas),
``figures`` (matplotlib), ``progress`` (``r2migrate watch``); they are re-exported here so that
``import r2migrate.report.audit as report`` reaches them all.

pandas and matplotlib (the ``[notebooks]`` extra) are imported inside the functions that need
them, so ``progress_snapshot`` (``r2migrate watch``) and ``write_audit_report``
(``r2migrate report``) work on a base install.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r2migrate.errors import ConfigError
from r2migrate.report.figures import (
    bar_figure,
    figure_png,
    progress_figure,
    size_histogram_figure,
)
from r2migrate.report.frames import (
    batches_frame,
    failures_frame,
    files_frame,
    inventory_folder,
    inventory_frame,
    plan_frame,
    planned_batches_frame,
    problem_counts_frame,
    progress_frame,
    run_frame,
)
from r2migrate.report.progress import (
    BatchProgress,
    FailureNote,
    progress_snapshot,
    total_progress,
)
from r2migrate.report.rows import (
    ACTION_MEANINGS,
    NOT_CHECKED,
    NOT_UPLOADED,
    OUTCOME_KIND,
    OUTCOME_LABELS,
    OUTCOME_MEANINGS,
    PROBLEM_MEANINGS,
    ROLLED_BACK,
    VERDICTS,
    VERIFY_OUTCOMES,
    AuditRow,
    audit_rows,
    batch_audit_rows,
    file_verdict,
    resolve_scope,
    target_scope,
)
from r2migrate.report.summary import (
    CostSoFar,
    Tally,
    cost_so_far,
    outcome_counts,
    status_counts,
    summary_dict,
    verdict_text,
)
from r2migrate.store.ledger import Batch, State

__all__ = [
    "ACTION_MEANINGS",
    "AUDIT_CSV_COLUMNS",
    "AUDIT_FORMAT",
    "NOT_CHECKED",
    "NOT_UPLOADED",
    "OUTCOME_KIND",
    "OUTCOME_LABELS",
    "OUTCOME_MEANINGS",
    "PROBLEM_MEANINGS",
    "ROLLED_BACK",
    "VERDICTS",
    "VERIFY_OUTCOMES",
    "AuditReport",
    "AuditRow",
    "BatchProgress",
    "CostSoFar",
    "FailureNote",
    "audit_rows",
    "bar_figure",
    "batches_frame",
    "cost_so_far",
    "failures_frame",
    "figure_png",
    "file_verdict",
    "files_frame",
    "inventory_folder",
    "inventory_frame",
    "outcome_counts",
    "plan_frame",
    "planned_batches_frame",
    "problem_counts_frame",
    "progress_figure",
    "progress_frame",
    "progress_snapshot",
    "resolve_scope",
    "run_frame",
    "size_histogram_figure",
    "status_counts",
    "summary_dict",
    "target_scope",
    "total_progress",
    "verdict_text",
    "write_audit_report",
]

AUDIT_FORMAT = "r2migrate-audit-report/1"
AUDIT_CSV_NAME = "files.csv"
AUDIT_SUMMARY_NAME = "summary.json"
AUDIT_MANIFEST_NAME = "manifest.json"
AUDIT_CSV_COLUMNS = (
    "batch_id",
    "file_id",
    "object_key",
    "relative_path",
    "size_bytes",
    "sha256",
    "status",
    "verify_outcome",
    "attempts",
    "error_code",
    "error",
    "uploaded_at",
    "last_checked_at",
    "last_verified_at",
)

# -- audit report files ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    """The files ``write_audit_report`` wrote; ``manifest`` lists the others with SHA-256s."""

    out_dir: Path
    csv_path: Path
    summary_path: Path
    manifest_path: Path
    rows: int
    summary: Mapping[str, Any]


def _iso(at: datetime | None) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at is not None else ""


def write_audit_report(
    state: State,
    out_dir: Path | str,
    *,
    batch_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> AuditReport:
    """Write ``files.csv`` (one row per file), ``summary.json`` and ``manifest.json`` to out_dir.

    The manifest lists each report file with its size and SHA-256, the way S3 Batch Operations
    completion reports do, and is written last: a folder with a manifest is a complete report.
    Refuses (ConfigError) when out_dir already holds anything; unknown batch ids raise
    BatchNotFound before anything is written. Memory stays at one batch.
    """
    out = Path(out_dir)
    batches = resolve_scope(state, batch_ids)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"{out} already exists and is not empty; an audit report never overwrites files.",
            hint="Choose a new folder for --out (e.g. one named after the date).",
        )
    out.mkdir(parents=True, exist_ok=True)
    created = now or datetime.now(UTC)
    csv_path = out / AUDIT_CSV_NAME
    tally = _write_csv(csv_path, state, batches)
    summary: dict[str, Any] = {
        "format": AUDIT_FORMAT,
        "created_at": _iso(created),
        "scope": "all" if batch_ids is None else [b.batch_id for b in batches],
        "batches": [
            {
                "batch_id": b.batch_id,
                "status": b.status.value,
                "endpoint_url": b.endpoint_url,
                "bucket_name": b.bucket_name,
                "location": b.location,
                "source": b.source.describe(),
            }
            for b in batches
        ],
        **tally.as_dict(),
    }
    summary_path = out / AUDIT_SUMMARY_NAME
    with _create(summary_path) as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
        fh.write("\n")
    manifest = {
        "format": AUDIT_FORMAT,
        "created_at": _iso(created),
        "scope": summary["scope"],
        "files": [
            _manifest_entry(csv_path, rows=tally.t["rows"], content_type="text/csv"),
            _manifest_entry(summary_path, rows=None, content_type="application/json"),
        ],
    }
    manifest_path = out / AUDIT_MANIFEST_NAME
    with _create(manifest_path) as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    return AuditReport(out, csv_path, summary_path, manifest_path, tally.t["rows"], summary)


def _write_csv(path: Path, state: State, batches: Sequence[Batch]) -> Tally:
    """``files.csv``, one batch in memory at a time; returns the totals of what it wrote."""
    tally = Tally()
    with _create(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(AUDIT_CSV_COLUMNS)
        for b in batches:
            for r in batch_audit_rows(state, b):
                tally.add(r)
                writer.writerow(
                    (
                        r.batch_id,
                        r.file_id,
                        r.object_key,
                        r.relative_path,
                        r.size_bytes,
                        r.sha256 or "",
                        r.status,
                        r.verify_outcome,
                        r.attempts,
                        r.error_code or "",
                        r.verify_error or r.error_message or "",
                        _iso(r.uploaded_at),
                        _iso(r.last_checked_at),
                        _iso(r.last_verified_at),
                    )
                )
    return tally


def _create(path: Path) -> io.TextIOWrapper:
    """Open for writing only if the file does not exist yet (never overwrite a report)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; an audit report never overwrites files.",
            hint="Choose a new folder for --out.",
        ) from exc
    return open(fd, "w", encoding="utf-8", newline="")


def _manifest_entry(path: Path, *, rows: int | None, content_type: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    entry: dict[str, Any] = {
        "name": path.name,
        "size_bytes": size,
        "sha256": digest.hexdigest(),
        "content_type": content_type,
    }
    if rows is not None:
        entry["rows"] = rows
    return entry
