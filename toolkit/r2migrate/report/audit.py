"""Read-only views of the state: ledger rows, DataFrames, figures, watch snapshots, audit files.

Must never write the toolkit's tables or touch the bucket or the source files: it only reads
``State`` and stage summaries. The only files it writes are the audit report files, into a folder
that holds nothing yet (an existing report is never overwritten).

pandas and matplotlib (the ``[notebooks]`` extra) are imported inside the functions that need
them, so ``progress_snapshot`` (``r2migrate watch``) and ``write_audit_report``
(``r2migrate report``) work on a base install. pandas ships no type information, so frames are
typed ``Any`` at this boundary. Figures are ``matplotlib.figure.Figure`` objects built without
pyplot (no global state, no GUI backend needed).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r2migrate.errors import PROBLEM_MEANINGS as _MEANINGS
from r2migrate.errors import BatchNotFound, ConfigError, Problem
from r2migrate.report.text import target_label
from r2migrate.rules import binding
from r2migrate.rules.pricing import (
    CLASS_A_USD_PER_MILLION,
    CLASS_B_USD_PER_MILLION,
    STORAGE_USD_PER_GB_MONTH,
)
from r2migrate.settings.config import Settings
from r2migrate.stages.inventory import InventorySummary
from r2migrate.stages.plan import Action, PlanSummary
from r2migrate.stages.transfer import RunSummary
from r2migrate.store.ledger import (
    DONE_STATUSES,
    Batch,
    BatchStatus,
    FileRecord,
    FileStatus,
    MediaFile,
    State,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ACTION_MEANINGS",
    "AUDIT_CSV_COLUMNS",
    "AUDIT_FORMAT",
    "OUTCOME_MEANINGS",
    "PROBLEM_MEANINGS",
    "VERDICTS",
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

DataFrame = Any  # a pandas.DataFrame; pandas has no type information for mypy

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

# What the verify stage records (events kind='verify', detail {key, mode, reason, etag});
# 'not_checked' = no verify event yet. Extras (and a failed listing) have no file row.
VERIFY_OUTCOMES = ("match", "differ", "missing", "extra", "source_changed", "not_uploaded", "error")
NOT_CHECKED = "not_checked"
NOT_UPLOADED = "not_uploaded"
# Shown instead of a file's last check once its row or batch is rolled back: whatever a check
# proved before, the object is no longer the migration's (deleted, or left as not ours).
ROLLED_BACK = "rolled_back"
# What a report concludes per file (``file_verdict``); every count of a report derives from it.
VERDICTS = ("proven", "needs_attention", "not_checked", "not_uploaded", "rolled_back")
_BAD_STATUSES = frozenset({FileStatus.FAILED, FileStatus.CONFLICT})

# Plain-language meanings, for reports read by people who never saw the tool.
PROBLEM_MEANINGS: Mapping[str, str] = _MEANINGS  # the one table lives in errors.py
ACTION_MEANINGS: Mapping[str, str] = {
    Action.UPLOAD.value: "would be uploaded",
    Action.ALREADY_THERE.value: "already in the bucket with the same SHA-256: nothing to send",
    Action.CONFLICT.value: "the key holds a different object: never overwritten, needs a person",
    Action.REFUSE.value: "cannot be migrated as it is (see the reason)",
    Action.ALREADY_PLANNED.value: "already in a batch",
    Action.ERROR.value: "the bucket could not be asked; planning again retries it",
}
OUTCOME_MEANINGS: Mapping[str, str] = {
    "match": "the object in the bucket is the file, byte for byte (size and SHA-256)",
    "differ": "the object's size or SHA-256 is not the file's",
    "missing": "no object at the key",
    "extra": "an object beside the migrated ones that no batch wrote",
    "source_changed": "the object is intact, but the file on disk changed after the upload",
    "not_uploaded": "the file has not been uploaded (pending, failed or conflict)",
    "error": "the check could not be made (see the reason)",
    ROLLED_BACK: "the batch was rolled back: its object was taken out of the bucket; not proven",
    NOT_CHECKED: "never verified yet (uploads are still checked by the server's SHA-256)",
}


def _pd() -> Any:
    return importlib.import_module("pandas")


# -- the ledger, one row per file, joined with its verification history ---------------------


@dataclass(frozen=True)
class AuditRow:
    """One file of a batch with the outcome of its last verification (or an ``extra`` object).

    ``last_verified_at`` is when a check last proved the object intact (outcome ``match``);
    ``last_checked_at`` when any check last looked at it. Rows without a ``row_id`` and with an
    empty ``status`` are what verify found beside the ledger: an ``extra`` object under the
    batch's keys, or an ``error`` listing them (``object_key`` is then the prefix).
    """

    batch_id: str
    row_id: int | None
    file_id: str
    object_key: str
    relative_path: str
    size_bytes: int
    sha256: str | None
    status: str
    attempts: int
    part_size_bytes: int | None
    error_code: str | None
    error_message: str | None
    uploaded_at: datetime | None
    verify_outcome: str = NOT_CHECKED
    verify_error: str | None = None
    last_checked_at: datetime | None = None
    last_verified_at: datetime | None = None
    verify_checks: int = 0  # verify events for this file (each one HEAD, Class B)
    deep_checks: int = 0  # of which streamed the object back (one GET more, Class B)

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    @property
    def failed(self) -> bool:
        """Needs a person: the upload failed, the key is taken, or the last check did not match."""
        if self.status in _BAD_STATUSES:
            return True
        return self.verify_outcome not in (NOT_CHECKED, NOT_UPLOADED, "match", ROLLED_BACK)

    @property
    def verdict(self) -> str:
        return file_verdict(self)


def file_verdict(r: AuditRow) -> str:
    """What a report concludes about one file (one of ``VERDICTS``); the only place it is decided.

    ``proven``: its last check matched and it is still uploaded. ``needs_attention``: failed,
    conflict, a check that did not match, or an extra object. ``not_uploaded``: not sent yet.
    ``not_checked``: uploaded, never verified. ``rolled_back``: never proven, whatever an
    earlier check said, and not a failure either (the rollback was asked for).
    """
    if r.verify_outcome == ROLLED_BACK:
        return "rolled_back"
    if r.failed:
        return "needs_attention"
    if r.verify_outcome == "match" and r.done:
        return "proven"
    if r.status and not r.done:
        return "not_uploaded"
    return "not_checked"


def target_scope(settings: Settings, state: State) -> tuple[list[str], str]:
    """ "Every batch" for a report: the configured target's (and source's) batches, as
    ``verify --all`` checks them, and a sentence naming what was left out. With no bucket
    configured, every batch."""
    batches = resolve_scope(state)
    if settings.bucket_name is None:
        return [b.batch_id for b in batches], ""
    mine, others = binding.split_by_binding(settings, batches)
    return [b.batch_id for b in mine], binding.left_out_note(others)


def resolve_scope(state: State, batch_ids: Sequence[str] | None = None) -> list[Batch]:
    """The batches asked for (every batch when None), oldest first for "every".

    Raises BatchNotFound for an unknown id, also on a database where nothing was ever planned
    (no schema yet), where "every batch" is simply none.
    """
    if not state.schema_version():
        for batch_id in batch_ids or ():
            raise BatchNotFound(
                f"No batch {batch_id!r}: nothing has been planned in this database."
            )
        return []
    if batch_ids is None:
        return state.list_batches()
    return [state.get_batch(b) for b in dict.fromkeys(batch_ids)]


def audit_rows(state: State, batch_ids: Sequence[str] | None = None) -> Iterator[AuditRow]:
    """Stream the ledger batch by batch (memory: one batch), each file with its last check."""
    for batch in resolve_scope(state, batch_ids):
        yield from _batch_audit_rows(state, batch)


def _batch_audit_rows(state: State, batch: Batch) -> Iterator[AuditRow]:
    batch_id = batch.batch_id
    files = state.batch_files(batch_id)
    checks: dict[int, list[Mapping[str, Any]]] = {}
    extras: dict[str, Mapping[str, Any]] = {}
    last_file_check: datetime | None = None
    for event in state.events(batch_id, kind="verify"):  # oldest first
        if event["file_row_id"] is None:
            # An extra object, or a listing that failed (error): the latest word per key.
            detail = event["detail"] or {}
            extras[str(detail.get("object_key") or detail.get("key") or "")] = event
            continue
        checks.setdefault(int(event["file_row_id"]), []).append(event)
        last_file_check = event["at"]
    rolled_back = batch.status is BatchStatus.ROLLED_BACK
    for f in files:
        yield _row_from_file(f, checks.get(f.id, []), rolled_back=rolled_back)
    for extra in extras.values():
        # verify lists extras after it has checked the batch's files, so an extra recorded
        # before the batch's last file check belongs to an earlier pass that a later one redid.
        if last_file_check is not None and extra["at"] < last_file_check:
            continue
        detail = extra["detail"] or {}
        key = str(detail.get("object_key") or detail.get("key") or "")
        yield AuditRow(
            batch_id=batch_id,
            row_id=None,
            file_id="",
            object_key=key,
            relative_path="",
            size_bytes=int(detail.get("size_bytes") or 0),
            sha256=detail.get("sha256_hex") or detail.get("object_sha256"),
            status="",
            attempts=0,
            part_size_bytes=None,
            error_code=None,
            error_message=None,
            uploaded_at=None,
            verify_outcome=str(extra["outcome"]),
            verify_error=_event_reason(detail),
            last_checked_at=extra["at"],
        )


def _event_reason(detail: Mapping[str, Any]) -> str | None:
    for name in ("reason", "error", "message"):
        if detail.get(name):
            return str(detail[name])
    return None


def _is_deep(detail: Mapping[str, Any]) -> bool:
    return detail.get("mode") == "deep" or bool(detail.get("deep"))


def _row_from_file(
    f: FileRecord, checks: Sequence[Mapping[str, Any]], *, rolled_back: bool = False
) -> AuditRow:
    outcome = NOT_CHECKED
    reason: str | None = None
    checked_at: datetime | None = None
    proven_at: datetime | None = f.verified_at
    requests = deep = 0
    for event in checks:  # oldest first: the last one decides
        detail = event["detail"] or {}
        outcome, checked_at = str(event["outcome"]), event["at"]
        reason = _event_reason(detail) if outcome != "match" else None
        if outcome == "match" and (proven_at is None or event["at"] > proven_at):
            proven_at = event["at"]
        if outcome != NOT_UPLOADED:  # a row not uploaded is reported without a request
            requests += 1
            deep += 1 if _is_deep(detail) else 0
    if f.status is FileStatus.VERIFIED and outcome == NOT_CHECKED:
        outcome = "match"  # verified by a stage that left no event: trust the ledger's status
    if rolled_back or f.status is FileStatus.ROLLED_BACK:
        outcome, reason = ROLLED_BACK, "rolled back: no longer in the bucket as this migration's"
    return AuditRow(
        batch_id=f.batch_id,
        row_id=f.id,
        file_id=f.file_id,
        object_key=f.object_key,
        relative_path=f.relative_path,
        size_bytes=f.size_bytes,
        sha256=f.object_sha256 or f.source_sha256,
        status=f.status.value,
        attempts=f.attempts,
        part_size_bytes=f.part_size_bytes,
        error_code=f.error_code,
        error_message=f.error_message,
        uploaded_at=f.uploaded_at,
        verify_outcome=outcome,
        verify_error=reason,
        last_checked_at=checked_at,
        last_verified_at=proven_at,
        verify_checks=requests,
        deep_checks=deep,
    )


# -- counts and cost (no pandas) ---------------------------------------------------------------


def status_counts(rows: Iterable[AuditRow]) -> dict[str, int]:
    """Files per ledger status (``extra`` objects are not files of the ledger: left out)."""
    counts = Counter(r.status for r in rows if r.row_id is not None)
    return dict(sorted(counts.items()))


def outcome_counts(rows: Iterable[AuditRow]) -> dict[str, int]:
    """Files per outcome of their last verification, ``not_checked`` when never verified."""
    counts = Counter(r.verify_outcome for r in rows)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class CostSoFar:
    """What the work recorded in the ledger has cost on R2 so far (list prices, USD).

    Class A: one PUT per attempt of a small file; create + parts + complete per multipart
    attempt. Class B: one HEAD per verification (plus one GET when deep). HEADs made while
    planning and resuming are not recorded in the ledger and so are not counted. Storage is
    the monthly price of the bytes now held for the ledger (uploaded, verified, skipped).
    """

    class_a_ops: int
    class_a_usd: float
    class_b_ops: int
    class_b_usd: float
    stored_bytes: int
    storage_usd_per_month: float

    @property
    def operations_usd(self) -> float:
        return round(self.class_a_usd + self.class_b_usd, 6)


def _operations(r: AuditRow) -> tuple[int, int]:
    """(Class A, Class B) requests the ledger shows for one file."""
    class_a = r.attempts
    if r.attempts and r.part_size_bytes:
        class_a = r.attempts * (max(1, math.ceil(r.size_bytes / r.part_size_bytes)) + 2)
    return class_a, r.verify_checks + r.deep_checks


def cost_so_far(rows: Iterable[AuditRow]) -> CostSoFar:
    class_a = class_b = stored = 0
    for r in rows:
        a, b = _operations(r)
        class_a += a
        class_b += b
        stored += r.size_bytes if r.done else 0
    return _cost(class_a, class_b, stored)


def _cost(class_a: int, class_b: int, stored_bytes: int) -> CostSoFar:
    return CostSoFar(
        class_a_ops=class_a,
        class_a_usd=round(class_a * CLASS_A_USD_PER_MILLION / 1e6, 6),
        class_b_ops=class_b,
        class_b_usd=round(class_b * CLASS_B_USD_PER_MILLION / 1e6, 6),
        stored_bytes=stored_bytes,
        storage_usd_per_month=round(stored_bytes / 1e9 * STORAGE_USD_PER_GB_MONTH, 6),
    )


class _Tally:
    """Running totals over ledger rows, so summaries never need all rows in memory."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.t: Counter[str] = Counter()

    def add(self, r: AuditRow) -> None:
        verdict = file_verdict(r)
        self.t["rows"] += 1
        self.outcomes[r.verify_outcome] += 1
        self.verdicts[verdict] += 1
        class_a, class_b = _operations(r)
        self.t["class_a_ops"] += class_a
        self.t["class_b_ops"] += class_b
        if r.row_id is None:
            self.t["extra_objects"] += 1
            return
        self.status[r.status] += 1
        self.t["files"] += 1
        self.t["bytes"] += r.size_bytes
        if r.done:
            self.t["files_done"] += 1
            self.t["bytes_done"] += r.size_bytes
        if verdict == "proven":
            self.t["bytes_proven"] += r.size_bytes

    def as_dict(self) -> dict[str, Any]:
        """The report's numbers; ``ok`` is its verdict: every file that is not rolled back is
        proven and nothing needs attention (so an empty scope is ok, with nothing to prove)."""
        t, v = self.t, self.verdicts
        cost = _cost(t["class_a_ops"], t["class_b_ops"], t["bytes_done"])
        return {
            "ok": all(v[k] == 0 for k in ("needs_attention", "not_checked", "not_uploaded")),
            "files": t["files"],
            "bytes": t["bytes"],
            "files_done": t["files_done"],
            "bytes_done": t["bytes_done"],
            "files_proven": v["proven"],
            "bytes_proven": t["bytes_proven"],
            "files_not_checked": self.outcomes.get(NOT_CHECKED, 0),
            "files_rolled_back": v["rolled_back"],
            "extra_objects": t["extra_objects"],
            "failures": v["needs_attention"],
            "verdicts": {k: v[k] for k in VERDICTS},
            "status_counts": dict(sorted(self.status.items())),
            "verify_outcomes": dict(sorted(self.outcomes.items())),
            "cost_so_far": {**asdict(cost), "operations_usd": cost.operations_usd},
        }


def verdict_text(summary: Mapping[str, Any]) -> str:
    """One sentence with the verdict of a ``summary_dict`` (or audit summary), for people."""
    v = summary.get("verdicts") or {}
    rolled = (
        f"; {v['rolled_back']:,} of rolled-back batches are not counted"
        if v.get("rolled_back")
        else ""
    )
    live = summary.get("files", 0) - v.get("rolled_back", 0)
    if summary.get("ok"):
        if live == 0:
            return f"Nothing to prove: no file is in the bucket for these batches{rolled}."
        return f"All {live:,} file(s) are proven identical to the originals{rolled}."
    return (
        f"Not all proven: {v.get('proven', 0):,} of {live:,} file(s) are proven identical; "
        f"{v.get('needs_attention', 0):,} need attention, {v.get('not_checked', 0):,} have not "
        f"been verified, {v.get('not_uploaded', 0):,} are not uploaded{rolled}."
    )


def summary_dict(
    state: State, batch_ids: Sequence[str] | None = None, *, rows: Iterable[AuditRow] | None = None
) -> dict[str, Any]:
    """JSON-ready summary of the batches asked for (every batch when None), for results.json.

    Pass ``rows`` (from ``audit_rows``) when you already hold them, to read the ledger once.
    """
    batches = resolve_scope(state, batch_ids)
    if rows is None:
        rows = (r for b in batches for r in _batch_audit_rows(state, b))
    tally = _Tally()
    for r in rows:
        tally.add(r)
    return {
        "scope": "all" if batch_ids is None else [b.batch_id for b in batches],
        "batches": len(batches),
        "batch_status": dict(sorted(Counter(b.status.value for b in batches).items())),
        **tally.as_dict(),
    }


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
    problems as text; ``blocking`` says whether a problem keeps it from being uploaded."""
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
                "folder": path.split("/", 1)[0] if "/" in path else "(top level)",
                "year": _year_of(path, item.mtime_ns),
                "orphan": item.is_orphan,
                "problems": ", ".join(item.problems),
                "blocking": any(Problem(p).blocking for p in item.problems),
                "content_type": item.content_type,
            }
        )
    columns = [
        "file_id", "relative_path", "object_key", "size_bytes", "folder", "year", "orphan",
        "problems", "blocking", "content_type",
    ]  # fmt: skip
    frame = pd.DataFrame(data, columns=columns)
    # Nullable integers: a missing size or year stays empty instead of turning the column float.
    return frame.astype({"size_bytes": "Int64", "year": "Int64"})


def _year_of(path: str, mtime_ns: int | None) -> int | None:
    """Django's upload_to='uploads/%Y/%m/' puts the year in the path; else the file's mtime."""
    for part in path.split("/")[:-1]:
        if len(part) == 4 and part.isdigit() and 1970 <= int(part) <= 2100:
            return int(part)
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).year


def problem_counts_frame(frame: DataFrame) -> DataFrame:
    """Per problem code (from ``inventory_frame``): files, bytes, blocking, what it means."""
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
                "meaning": PROBLEM_MEANINGS.get(code, ""),
            }
        )
    return pd.DataFrame(rows, columns=["problem", "files", "bytes", "blocking", "meaning"])


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


# -- watch -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureNote:
    """A recent failure: a retried error (``final`` False) or a file given up on (True)."""

    at: datetime | None
    batch_id: str
    object_key: str | None
    code: str
    message: str
    final: bool


@dataclass(frozen=True)
class BatchProgress:
    """Where one batch stands, for ``r2migrate watch`` (read from the state, any machine).

    ``files_done`` counts uploaded, verified and skipped files; ``bytes_done`` the bytes
    uploaded. Throughput is measured over the last ``window_s`` seconds of uploads; ``eta_s`` is
    None when nothing moved in that window or the batch is not running.
    """

    batch_id: str
    status: str
    files_total: int
    files_done: int
    files_failed: int  # failed + conflict
    bytes_total: int
    bytes_done: int
    window_s: float
    files_per_s: float
    bytes_per_s: float
    eta_s: float | None
    started_at: datetime | None
    completed_at: datetime | None
    recent_failures: tuple[FailureNote, ...] = field(default=())
    target: str = ""  # the batch's bucket (and location): where its objects go

    @property
    def files_left(self) -> int:
        return max(0, self.files_total - self.files_done - self.files_failed)

    @property
    def active(self) -> bool:
        """A runner is (or was, until its lease runs out) working on this batch."""
        return self.status == BatchStatus.RUNNING.value

    @property
    def fraction_done(self) -> float:
        return self.files_done / self.files_total if self.files_total else 1.0


def progress_snapshot(
    state: State,
    batch_id: str | None = None,
    *,
    window_s: float = 60.0,
    now: datetime | None = None,
    max_failures: int = 5,
) -> list[BatchProgress]:
    """One ``BatchProgress`` per batch (or for ``batch_id``), oldest batch first.

    Cheap enough to call every second: finished batches are read from their counters; only
    running batches (and the one asked for) have their files read for throughput. ``now``
    defaults to this machine's clock; upload times come from PostgreSQL's, so keep them in sync.
    """
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=window_s)
    batches = resolve_scope(state, None if batch_id is None else [batch_id])
    out: list[BatchProgress] = []
    for b in batches:
        detailed = batch_id is not None or b.status is BatchStatus.RUNNING
        files: list[FileRecord] = state.batch_files(b.batch_id) if detailed else []
        files_per_s = bytes_per_s = 0.0
        notes: list[FailureNote] = []
        if detailed:
            recent = [f for f in files if f.uploaded_at is not None and f.uploaded_at > since]
            # Measure over the window, or since the start when the batch is younger than that.
            span = window_s
            if b.started_at is not None:
                span = min(window_s, max(1e-3, (now - b.started_at).total_seconds()))
            files_per_s = len(recent) / span if span > 0 else 0.0
            moved = sum(f.size_bytes for f in recent if f.status is not FileStatus.SKIPPED)
            bytes_per_s = moved / span if span > 0 else 0.0
            notes = _recent_failures(state, b.batch_id, files, max_failures)
        elif b.failed_files or b.conflict_files:
            notes = _recent_failures(state, b.batch_id, state.batch_files(b.batch_id), max_failures)
        files_done = b.uploaded_files + b.skipped_files
        files_failed = b.failed_files + b.conflict_files
        left = max(0, b.total_files - files_done - files_failed)
        eta: float | None = None
        if b.status is BatchStatus.RUNNING and files_per_s > 0:
            eta = left / files_per_s
        elif left == 0:
            eta = 0.0
        out.append(
            BatchProgress(
                batch_id=b.batch_id,
                status=b.status.value,
                files_total=b.total_files,
                files_done=files_done,
                files_failed=files_failed,
                bytes_total=b.total_bytes,
                bytes_done=b.uploaded_bytes,
                window_s=window_s,
                files_per_s=files_per_s,
                bytes_per_s=bytes_per_s,
                eta_s=eta,
                started_at=b.started_at,
                completed_at=b.completed_at,
                recent_failures=tuple(notes),
                target=target_label(b),
            )
        )
    return out


def _recent_failures(
    state: State, batch_id: str, files: Sequence[FileRecord], limit: int
) -> list[FailureNote]:
    if limit <= 0:
        return []
    keys = {f.id: f.object_key for f in files}
    notes = [
        FailureNote(
            at=f.updated_at,
            batch_id=batch_id,
            object_key=f.object_key,
            code=f.error_code or f.status.value,
            message=f.error_message or "",
            final=True,
        )
        for f in files
        if f.status in _BAD_STATUSES
    ]
    errors = state.events(batch_id, kind="attempt", outcome="error", newest_first=True, limit=limit)
    for event in errors:
        detail = event["detail"] or {}
        row = event["file_row_id"]
        notes.append(
            FailureNote(
                at=event["at"],
                batch_id=batch_id,
                object_key=keys.get(int(row)) if row is not None else None,
                code=str(detail.get("code") or "error"),
                message=str(detail.get("error") or ""),
                final=False,
            )
        )
    epoch = datetime.min.replace(tzinfo=UTC)
    notes.sort(key=lambda n: n.at or epoch, reverse=True)
    return notes[:limit]


def total_progress(items: Sequence[BatchProgress]) -> BatchProgress:
    """All batches of a snapshot added up (batch_id ``*``), for a one-line total."""
    files_per_s = sum(p.files_per_s for p in items)
    left = sum(p.files_left for p in items)
    running = any(p.active for p in items)
    eta: float | None = left / files_per_s if running and files_per_s > 0 else None
    if left == 0:
        eta = 0.0
    starts = [p.started_at for p in items if p.started_at is not None]
    ends = [p.completed_at for p in items if p.completed_at is not None]
    failures = sorted(
        (n for p in items for n in p.recent_failures),
        key=lambda n: n.at or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    return BatchProgress(
        batch_id="*",
        status=BatchStatus.RUNNING.value if running else "idle",
        files_total=sum(p.files_total for p in items),
        files_done=sum(p.files_done for p in items),
        files_failed=sum(p.files_failed for p in items),
        bytes_total=sum(p.bytes_total for p in items),
        bytes_done=sum(p.bytes_done for p in items),
        window_s=max((p.window_s for p in items), default=0.0),
        files_per_s=files_per_s,
        bytes_per_s=sum(p.bytes_per_s for p in items),
        eta_s=eta,
        started_at=min(starts) if starts else None,
        completed_at=max(ends) if ends and not running else None,
        recent_failures=tuple(failures[:5]),
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
    tally = _Tally()
    with _create(csv_path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(AUDIT_CSV_COLUMNS)
        for b in batches:
            for r in _batch_audit_rows(state, b):
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
