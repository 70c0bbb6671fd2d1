"""Repair in place: send again the files of a batch that verify disproved or that failed because
the source changed, without rolling the batch back or touching its other files.

Must never overwrite an object, nor delete one it cannot prove is its own (its ``sha256`` metadata
is a SHA-256 this row recorded); such a key becomes a `conflict`. The bytes go through stage 3
(``transfer.run``): the same create-only, checksummed PUT, intent before and outcome after.

Which rows (``State.repair_candidates``) and what happens to each:

=========================  =========================================================
row                        repair
=========================  =========================================================
verify:missing             re-measure the source, queue it again
verify:differ              the object is ours (our SHA-256 in its metadata, wrong
                           bytes or size): deleted with If-Match, then queued again;
                           anyone else's: `conflict`, left in place
verify:source_changed      the source changed after upload: our old object deleted
                           (If-Match), the new bytes measured and queued
failed size_mismatch /     the source changed before upload: re-measured (size,
failed source_changed      mtime, SHA-256), the new measurement recorded, queued
=========================  =========================================================

Each decision is a 'repair' event naming the reason (the row's error code), the measurement the
ledger held and the new one, and the ETag of any object deleted. With ``write_back`` the
application's ``migration_status`` follows: 'pending' when queued, 'conflict' when refused, then
whatever the upload gives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from r2migrate.errors import BatchRolledBack, BucketError, SourceError, SourceRefused
from r2migrate.media.base import open_media_source
from r2migrate.rules import binding
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.transfer import BatchResult, Progress, RunSummary
from r2migrate.stages.transfer import run as run_batches
from r2migrate.store import catalog
from r2migrate.store.ledger import Batch, BatchStatus, FileRecord, FileStatus, Repair, State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepairSummary:
    """What a repair did before (``requeued``, ``deleted``, ``conflicts``, ``unreadable``) and
    during the upload of the files it queued again (``run``: None when nothing was queued)."""

    batch_ids: tuple[str, ...]
    requeued: int
    deleted: int  # stale objects of ours deleted before their file was sent again
    conflicts: int  # keys holding someone else's object: never touched
    unreadable: int  # sources that could not be measured: rows left as they were
    run: RunSummary | None

    @property
    def failed(self) -> int:
        return self.conflicts + self.unreadable + (self.run.failed if self.run else 0)


@dataclass(frozen=True)
class _Measured:
    size_bytes: int
    mtime_ns: int | None
    sha256_hex: str


class _Measurer:
    """Measures a source file as it is now (size, mtime, SHA-256), on disk or over HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.media = open_media_source(settings)

    def measure(self, name: str) -> _Measured:
        found = self.media.stat(name)
        sha, size = self.media.sha256(name)
        return _Measured(size, found.mtime_ns, sha)

    def close(self) -> None:
        self.media.close()


def repair(
    settings: Settings,
    state: State,
    *,
    batch_id: str | None = None,
    bucket: Bucket | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RepairSummary:
    """Repair one batch (`batch_id`) or every batch of the configured target and source.

    Raises what ``transfer.run`` raises (the upload of the queued files is one run per batch),
    BatchRolledBack for a rolled-back batch, SourceRefused (401/403) and BucketError when the
    bucket cannot be asked at all. A file whose source cannot be read stays as it was.
    """
    if batch_id is not None:
        batches: Sequence[Batch] = [state.get_batch(batch_id)]
        if batches[0].status is BatchStatus.ROLLED_BACK:
            raise BatchRolledBack(
                f"Batch {batch_id} was rolled back; plan its files again instead of repairing."
            )
    else:
        live = [b for b in state.list_batches() if b.status is not BatchStatus.ROLLED_BACK]
        batches, _ = binding.split_by_binding(settings, live)
    totals = dict.fromkeys(("requeued", "deleted", "conflicts", "unreadable"), 0)
    results: list[BatchResult] = []
    touched: list[str] = []
    for batch in batches:
        rows = state.repair_candidates(batch.batch_id)
        if not rows:
            continue
        touched.append(batch.batch_id)
        bound = binding.settings_for_batch(settings, batch)
        target = Bucket.for_settings(bound, bucket)
        counts = _requeue(bound, state, target, batch.batch_id, rows)
        for name, n in counts.items():
            totals[name] += n
        if counts["requeued"]:
            summary = run_batches(
                bound,
                state,
                batch_id=batch.batch_id,
                bucket=target,
                stop=stop,
                on_progress=on_progress,
                retry_failed=False,  # only the files repaired here: the others are left alone
            )
            results.extend(summary.batches)
    return RepairSummary(
        batch_ids=tuple(touched),
        run=RunSummary(tuple(results)) if results else None,
        **totals,
    )


def _requeue(
    settings: Settings, state: State, bucket: Bucket, batch_id: str, rows: Sequence[FileRecord]
) -> dict[str, int]:
    counts = dict.fromkeys(("requeued", "deleted", "conflicts", "unreadable"), 0)
    repairs: list[Repair] = []
    unreadable: list[tuple[int | None, str, dict[str, Any]]] = []
    measurer = _Measurer(settings)
    try:
        for rec in rows:
            try:
                now = measurer.measure(rec.relative_path)
            except SourceRefused:
                raise  # 401/403: wrong for every file
            except SourceError as exc:
                unreadable.append(
                    (rec.id, "unreadable", {"reason": rec.error_code, "error": exc.message})
                )
                continue
            repairs.append(_decide(bucket, rec, now))
    finally:
        measurer.close()
    state.add_events(batch_id, "repair", unreadable)
    counts["unreadable"] = len(unreadable)
    changed = state.requeue_for_repair(batch_id, repairs)
    done = [r for r in repairs if r.row_id in changed]
    counts["requeued"] = sum(r.status is FileStatus.PENDING for r in done)
    counts["conflicts"] = sum(r.status is FileStatus.CONFLICT for r in done)
    counts["deleted"] = sum("deleted_etag" in r.detail for r in done)
    for r in done:
        log.info(
            "repair of row %d: %s (%s)",
            r.row_id,
            r.outcome,
            r.detail.get("reason"),
            extra={"batch_id": batch_id, "outcome": f"repair:{r.outcome}"},
        )
    if settings.write_back:
        by_id = {rec.id: rec for rec in rows}
        for status in (FileStatus.PENDING, FileStatus.CONFLICT):
            file_ids = [
                file_id
                for r in done
                if r.status is status
                for file_id in (by_id[r.row_id].source_refs or (by_id[r.row_id].file_id,))
            ]
            catalog.write_back_status_of(
                state.conn,
                file_ids,
                status=status.value,
                batch_id=batch_id,
                id_column=settings.reference_id_column,
            )
    return counts


def _decide(bucket: Bucket, rec: FileRecord, now: _Measured) -> Repair:
    """Queue the file again, deleting first an object of ours at its key; refuse anyone else's.

    An object is ours when its ``sha256`` metadata is a SHA-256 this row recorded (what was
    sent, or what the source hashed to). One that already carries the new SHA-256 is left:
    the create-only PUT is refused and the transfer stage proves it ours by HEAD.
    """
    detail: dict[str, Any] = {
        "reason": rec.error_code,
        "key": rec.object_key,
        "ledger": {"size": rec.size_bytes, "mtime_ns": rec.mtime_ns, "sha256": rec.source_sha256},
        "measured": {"size": now.size_bytes, "mtime_ns": now.mtime_ns, "sha256": now.sha256_hex},
    }
    ours = {rec.object_sha256, rec.source_sha256, now.sha256_hex} - {None}
    status, outcome, message = FileStatus.PENDING, "requeued", ""
    info = bucket.head(rec.object_key)
    already = (
        info is not None
        and (info.sha256_hex, info.size_bytes) == (now.sha256_hex, now.size_bytes)
        and rec.error_code != "verify:differ"  # its bytes were found wrong: never trusted again
    )
    if info is not None and not already:
        if info.sha256_hex in ours:
            try:
                bucket.delete_if_match(rec.object_key, info.etag)
                detail["deleted_etag"] = info.etag
            except BucketError as exc:  # replaced since the HEAD: not provably ours any more
                status, outcome = FileStatus.CONFLICT, "conflict"
                message = f"repair: the object changed while it was deleted ({exc.message})"
        else:
            status, outcome = FileStatus.CONFLICT, "conflict"
            message = "repair refused: the key holds an object that is not ours"
            detail["object_sha256"] = info.sha256_hex
    return Repair(
        row_id=rec.id,
        seen=rec.status,
        status=status,
        size_bytes=now.size_bytes,
        mtime_ns=now.mtime_ns,
        source_sha256=now.sha256_hex,
        outcome=outcome,
        detail=detail,
        message=message,
    )
