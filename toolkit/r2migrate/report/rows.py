"""The ledger read back, one row per file with its last check, and what a report concludes.

Must never write the toolkit's tables or touch the bucket: it only reads ``State``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from r2migrate.errors import PROBLEM_MEANINGS as _MEANINGS
from r2migrate.errors import BatchNotFound
from r2migrate.rules import binding
from r2migrate.settings.config import Settings
from r2migrate.stages.plan import Action
from r2migrate.store.ledger import (
    DONE_STATUSES,
    Batch,
    BatchStatus,
    FileRecord,
    FileStatus,
    State,
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
BAD_STATUSES = frozenset({FileStatus.FAILED, FileStatus.CONFLICT})

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

# The outcome names a manager reads, in reports (the codes stay in files.csv and results.json).
OUTCOME_LABELS: Mapping[str, str] = {
    "match": "proven identical",
    "differ": "different in the bucket",
    "missing": "missing from the bucket",
    "extra": "extra object in the bucket",
    "source_changed": "original changed since upload",
    "not_uploaded": "not uploaded",
    "error": "could not be checked",
    ROLLED_BACK: "rolled back",
    NOT_CHECKED: "not checked yet",
}
# Which outcomes are good news, bad news, or neither (how a report colours them).
OUTCOME_KIND: Mapping[str, str] = {
    "match": "proven",
    **dict.fromkeys(("differ", "missing", "extra", "source_changed", "error"), "failed"),
    **dict.fromkeys(("not_uploaded", ROLLED_BACK, NOT_CHECKED), "not_checked"),
}

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
        if self.status in BAD_STATUSES:
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
        yield from batch_audit_rows(state, batch)


def batch_audit_rows(state: State, batch: Batch) -> Iterator[AuditRow]:
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
