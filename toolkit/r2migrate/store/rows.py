"""The ledger's rows as Python values: statuses, inventory rows, batches, file records, outcomes.

Must never speak SQL or hold a connection: plain enums and frozen dataclasses, shared by ledger.py,
history.py and the code that calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from r2migrate.rules.binding import SourceSpec, Target


class BatchStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class FileStatus(StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    FAILED = "failed"
    CONFLICT = "conflict"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"


DONE_STATUSES = frozenset({FileStatus.UPLOADED, FileStatus.VERIFIED, FileStatus.SKIPPED})


@dataclass(frozen=True, slots=True)  # one per row: no __dict__
class MediaFile:
    """One inventory row: a referenced name (or an orphan on disk) and what is wrong with it."""

    file_id: str
    source_ref: str | None
    source_id: str | None
    relative_path: str | None
    object_key: str | None
    size_bytes: int | None
    mtime_ns: int | None
    content_type: str | None
    content_encoding: str | None
    problems: tuple[str, ...] = ()
    # The file read for this row when it is not spelled as relative_path: the name cleaned the
    # way Django's FileSystemStorage cleans it, or its one Unicode-equivalent spelling on disk.
    disk_path: str | None = None

    @property
    def is_orphan(self) -> bool:
        return self.source_ref is None


@dataclass(frozen=True)
class Batch:
    batch_id: str
    status: BatchStatus
    dry_run: bool
    batch_size: int
    total_files: int
    uploaded_files: int
    verified_files: int
    failed_files: int
    skipped_files: int
    conflict_files: int
    total_bytes: int
    uploaded_bytes: int
    bucket_name: str
    location: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_error: str | None
    # What the batch is bound to, recorded at plan time (see binding.py).
    endpoint_url: str = ""
    source_kind: str = "disk"
    media_root: str | None = None
    media_url: str | None = None

    @property
    def target(self) -> Target:
        return Target(self.endpoint_url, self.bucket_name, self.location)

    @property
    def source(self) -> SourceSpec:
        return SourceSpec(self.source_kind, self.media_root, self.media_url)


@dataclass(frozen=True)
class FileRecord:
    """One row of the per-file ledger (the original system's file_migration_records)."""

    id: int
    batch_id: str
    file_id: str
    relative_path: str
    object_key: str
    size_bytes: int
    mtime_ns: int | None
    content_type: str
    content_encoding: str | None
    status: FileStatus
    attempts: int
    source_sha256: str | None = None
    object_sha256: str | None = None
    etag: str | None = None
    part_size_bytes: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    lease_owner: str | None = None
    source_refs: tuple[str, ...] = ()
    previous_status: FileStatus | None = None  # set by claim_files: what the row was before
    created_at: datetime | None = None
    updated_at: datetime | None = None
    uploaded_at: datetime | None = None
    verified_at: datetime | None = None


@dataclass(frozen=True, slots=True)  # one per row: no __dict__
class NewFile:
    """What plan hands to create_batch for one object key."""

    file_id: str
    source_refs: tuple[str, ...]
    relative_path: str
    object_key: str
    size_bytes: int
    mtime_ns: int | None
    content_type: str
    content_encoding: str | None
    status: FileStatus = FileStatus.PENDING
    source_sha256: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What the transfer stage learned about one claimed file; written in groups."""

    row_id: int
    status: FileStatus
    attempts_made: int
    source_sha256: str | None = None
    object_sha256: str | None = None
    etag: str | None = None
    part_size_bytes: int | None = None
    size_bytes: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    events: tuple[tuple[str, str, Mapping[str, Any]], ...] = field(default=())
    mtime_ns: int | None = None  # of the file as it was sent (it may have changed since plan)
    retryable: bool = False  # a failure another round may cure (5xx, reset); not a column
    settled_by_head: bool = False  # uploaded without sending: HEAD found this file's SHA-256


# What a repair may send again (see State.repair_candidates): verify's verdicts on a done row,
# and the transfer failures that mean "the source is no longer what inventory measured".
REPAIRABLE_VERIFY_CODES = ("verify:missing", "verify:differ", "verify:source_changed")
REPAIRABLE_FAILURE_CODES = ("size_mismatch", "source_changed")


@dataclass(frozen=True)
class Repair:
    """One row a repair re-queues (status `pending`) or gives up on (`conflict`)."""

    row_id: int
    seen: FileStatus  # the status the repair read; the row changes only if it still has it
    status: FileStatus
    size_bytes: int
    mtime_ns: int | None
    source_sha256: str | None
    outcome: str  # of the 'repair' event: requeued, conflict
    detail: Mapping[str, Any]
    message: str = ""


_BATCH_FIELDS = frozenset(f.name for f in fields(Batch))
_FILE_FIELDS = frozenset(f.name for f in fields(FileRecord)) - {"status", "previous_status"}


def batch_from_row(r: Mapping[str, Any]) -> Batch:
    """A ``batches`` row (at least every field of Batch) as a Batch."""
    values = {k: v for k, v in r.items() if k in _BATCH_FIELDS}
    return Batch(**{**values, "status": BatchStatus(r["status"])})


def file_from_row(r: Mapping[str, Any]) -> FileRecord:
    """A ``files`` row as a FileRecord; a claimed row also carries its ``previous`` status."""
    values = {k: v for k, v in r.items() if k in _FILE_FIELDS}
    previous = r.get("previous")
    return FileRecord(
        **{
            **values,
            "source_refs": tuple(r["source_refs"] or ()),
        },
        status=FileStatus(r["status"]),
        previous_status=FileStatus(previous) if previous else None,
    )
