"""Where each batch stands, for ``r2migrate watch`` and the dashboard (cheap to poll).

Must never write the toolkit's tables: it reads batch counters and recent files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from r2migrate.report.rows import BAD_STATUSES, resolve_scope
from r2migrate.report.text import target_label
from r2migrate.store.ledger import (
    BatchStatus,
    FileRecord,
    FileStatus,
    State,
)

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
        if f.status in BAD_STATUSES
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
