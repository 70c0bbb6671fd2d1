"""pandas DataFrames of the ledger, an inventory, a plan and a run, for notebooks.

Must never write anything. pandas (the ``[notebooks]`` extra) is imported inside the
functions, and ships no type information, so frames are typed ``Any`` at this boundary.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from r2migrate.errors import Problem
from r2migrate.report.rows import PROBLEM_MEANINGS, AuditRow, audit_rows, resolve_scope
from r2migrate.report.text import target_label
from r2migrate.stages.plan import Action, PlanSummary
from r2migrate.stages.transfer import RunSummary
from r2migrate.store.ledger import (
    MediaFile,
    State,
)

DataFrame = Any  # a pandas.DataFrame; pandas has no type information for mypy


def _pd() -> Any:
    return importlib.import_module("pandas")


# -- DataFrames --------------------------------------------------------------------------------


def batches_frame(state: State, batch_ids: Sequence[str] | None = None) -> DataFrame:
    """One row per batch: status, counts, bytes, times (oldest first)."""
    pd = _pd()
    rows = [
        {
            "batch_id": b.batch_id,
            "target": target_label(b),
            "status": b.status.value,
            "files": b.total_files,
            "uploaded": b.uploaded_files,
            "verified": b.verified_files,
            "skipped": b.skipped_files,
            "failed": b.failed_files,
            "conflict": b.conflict_files,
            "bytes": b.total_bytes,
            "uploaded_bytes": b.uploaded_bytes,
            "created_at": b.created_at,
            "started_at": b.started_at,
            "completed_at": b.completed_at,
            "last_error": b.last_error,
        }
        for b in resolve_scope(state, batch_ids)
    ]
    columns = [
        "batch_id", "target", "status", "files", "uploaded", "verified", "skipped", "failed",
        "conflict", "bytes", "uploaded_bytes", "created_at", "started_at", "completed_at",
        "last_error",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def files_frame(
    state: State | None = None,
    batch_ids: Sequence[str] | None = None,
    *,
    rows: Iterable[AuditRow] | None = None,
) -> DataFrame:
    """One row per file (and per ``extra`` object) of the batches asked for (all when None)."""
    pd = _pd()
    if rows is None:
        if state is None:
            raise ValueError("files_frame needs a state or rows")
        rows = audit_rows(state, batch_ids)
    data = [asdict(r) for r in rows]
    columns = [f.name for f in AuditRow.__dataclass_fields__.values()]
    return pd.DataFrame(data, columns=columns)


def failures_frame(rows: Iterable[AuditRow]) -> DataFrame:
    """Files that need a person, and why: failed, conflict, or a check that did not match."""
    pd = _pd()
    data = [
        {
            "batch_id": r.batch_id,
            "object_key": r.object_key,
            "status": r.status,
            "verify_outcome": r.verify_outcome,
            "reason": r.verify_error or r.error_message or r.error_code or r.verify_outcome,
            "error_code": r.error_code,
            "attempts": r.attempts,
        }
        for r in rows
        if r.failed
    ]
    columns = ["batch_id", "object_key", "status", "verify_outcome", "reason", "error_code"]
    return pd.DataFrame(data, columns=[*columns, "attempts"])


def progress_frame(rows: Iterable[AuditRow]) -> DataFrame:
    """Cumulative files and bytes uploaded, and files proven by verification, over time."""
    pd = _pd()
    points: list[tuple[datetime, int, int, int]] = []
    for r in rows:
        if r.uploaded_at is not None and r.done:
            points.append((r.uploaded_at, 1, r.size_bytes, 0))
        if r.last_verified_at is not None and r.verdict == "proven":
            points.append((r.last_verified_at, 0, 0, 1))
    points.sort(key=lambda p: p[0])
    frame = pd.DataFrame(points, columns=["at", "files", "bytes", "proven"])
    frame["files_uploaded"] = frame["files"].cumsum()
    frame["bytes_uploaded"] = frame["bytes"].cumsum()
    frame["files_proven"] = frame["proven"].cumsum()
    return frame[["at", "files_uploaded", "bytes_uploaded", "files_proven"]]


def inventory_frame(items: Iterable[MediaFile]) -> DataFrame:
    """One row per inventory item, with its top folder, year (from the path, else mtime) and
    problems as text (codes, and ``meanings`` for people, `` | ``-separated); ``blocking`` says
    whether a problem keeps it from being uploaded."""
    pd = _pd()
    data = []
    for item in items:
        path = item.relative_path or ""
        data.append(
            {
                "file_id": item.file_id,
                "relative_path": path,
                "object_key": item.object_key,
                "size_bytes": item.size_bytes,
                "folder": inventory_folder(path),
                "year": _year_of(path, item.mtime_ns),
                "orphan": item.is_orphan,
                "problems": ", ".join(item.problems),
                "blocking": any(Problem(p).blocking for p in item.problems),
                "meanings": " | ".join(PROBLEM_MEANINGS.get(p, p) for p in item.problems),
                "content_type": item.content_type,
            }
        )
    columns = [
        "file_id", "relative_path", "object_key", "size_bytes", "folder", "year", "orphan",
        "problems", "blocking", "meanings", "content_type",
    ]  # fmt: skip
    frame = pd.DataFrame(data, columns=columns)
    # Nullable integers: a missing size or year stays empty instead of turning the column float.
    return frame.astype({"size_bytes": "Int64", "year": "Int64"})


def inventory_folder(path: str) -> str:
    """The top folder a reader knows: '(top level)' for a bare name, and one label for the
    names that climb out of the media folder or are absolute (never a '..' or '' folder)."""
    if "/" not in path:
        return "(top level)"
    top = path.split("/", 1)[0]
    if top in ("", ".", "..") or ":" in top or "\\" in top:
        return "(outside the media folder)"
    return top


def _year_of(path: str, mtime_ns: int | None) -> int | None:
    """Django's upload_to='uploads/%Y/%m/' puts the year in the path; else the file's mtime."""
    for part in path.split("/")[:-1]:
        if len(part) == 4 and part.isdigit() and 1970 <= int(part) <= 2100:
            return int(part)
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).year


# What a problem does to a file, in words (instead of ``blocking`` True / False).
EFFECTS = {True: "not migrated until fixed", False: "migrated; worth a look"}


def problem_counts_frame(frame: DataFrame) -> DataFrame:
    """Per problem code (from ``inventory_frame``): files, bytes, blocking (and its ``effect``
    in words), what it means."""
    pd = _pd()
    rows = []
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for problems, size in zip(frame["problems"], frame["size_bytes"], strict=True):
        for code in filter(None, str(problems).split(", ")):
            counts[code] += 1
            sizes[code] += 0 if pd.isna(size) else int(size)
    for code, n in counts.most_common():
        rows.append(
            {
                "problem": code,
                "files": n,
                "bytes": sizes[code],
                "blocking": Problem(code).blocking,
                "effect": EFFECTS[Problem(code).blocking],
                "meaning": PROBLEM_MEANINGS.get(code, ""),
            }
        )
    columns = ["problem", "files", "bytes", "blocking", "effect", "meaning"]
    return pd.DataFrame(rows, columns=columns)


def plan_frame(summary: PlanSummary) -> DataFrame:
    """One row per planned object key: action, reason, size, the batch it went to."""
    pd = _pd()
    data = [
        {
            "action": i.action.value,
            "object_key": i.object_key,
            "relative_path": i.relative_path,
            "size_bytes": i.size_bytes,
            "reason": i.reason,
            "rows": len(i.file_ids),
            "batch_id": i.batch_id,
        }
        for i in summary.items
    ]
    columns = ["action", "object_key", "relative_path", "size_bytes", "reason", "rows", "batch_id"]
    return pd.DataFrame(data, columns=columns)


def planned_batches_frame(summary: PlanSummary) -> DataFrame:
    """The batches a plan created, or for a dry run the ones it would create (numbered)."""
    pd = _pd()
    sendable = [i for i in summary.items if i.action in (Action.UPLOAD, Action.ALREADY_THERE)]
    groups: dict[str, list[Any]] = {}
    if summary.dry_run or not summary.batch_ids:
        size = max(1, summary.batch_size)
        for n, start in enumerate(range(0, len(sendable), size), start=1):
            groups[f"(would be batch {n})"] = sendable[start : start + size]
    else:
        for i in sendable:
            groups.setdefault(i.batch_id or "", []).append(i)
    data = [
        {
            "batch": name,
            "files": len(items),
            "upload": sum(1 for i in items if i.action is Action.UPLOAD),
            "already_there": sum(1 for i in items if i.action is Action.ALREADY_THERE),
            "bytes": sum(i.size_bytes for i in items),
        }
        for name, items in groups.items()
    ]
    return pd.DataFrame(data, columns=["batch", "files", "upload", "already_there", "bytes"])


def run_frame(summary: RunSummary) -> DataFrame:
    """One row per batch a run worked on: outcome counts, bytes sent, time, throughput."""
    pd = _pd()
    data = [
        {
            "batch_id": b.batch_id,
            "status": b.status.value,
            "uploaded": b.uploaded,
            "skipped": b.skipped,
            "failed": b.failed,
            "conflict": b.conflict,
            "resolved_by_head": b.resolved_by_head,
            "bytes_sent": b.bytes_sent,
            "attempts": b.attempts,
            "elapsed_s": round(b.elapsed_s, 2),
            "files_per_s": round(b.files_per_s, 1),
            "mib_per_s": round(b.mib_per_s, 2),
        }
        for b in summary.batches
    ]
    columns = [
        "batch_id", "status", "uploaded", "skipped", "failed", "conflict", "resolved_by_head",
        "bytes_sent", "attempts", "elapsed_s", "files_per_s", "mib_per_s",
    ]  # fmt: skip
    return pd.DataFrame(data, columns=columns)
