"""The reverse of stage 3: delete the objects one batch wrote, and only those, then record it.

Must never touch source files, and never delete an object it cannot prove is its own: the object
must carry the ledger's SHA-256 (``sha256`` metadata) and size, its content is re-hashed when the
ETag differs from the one recorded at upload, and the DELETE is conditional (``If-Match`` on the
ETag just seen), so an object replaced between the HEAD and the DELETE is never removed.

Per row of the batch (rows already `rolled_back` are done and skipped; that makes a second run a
no-op and lets a run cut short be finished by running it again):

==============  ====================================================  =======================
outcome         when                                                  row after
==============  ====================================================  =======================
deleted         the object held our SHA-256 and was deleted           rolled_back
would_delete    the same, in a dry run                                unchanged
already_gone    no object at the key (never landed, or deleted)       rolled_back
not_sent        `pending` and never attempted: no request is made     rolled_back
kept            `skipped` (the object was there before this batch,    rolled_back
                with this file's SHA-256) or `conflict` (a foreign
                object held the key all along): left in place
refused         the object is not (or no longer) provably ours        unchanged
error           the check or the DELETE failed (endpoint, source)     unchanged
==============  ====================================================  =======================

A `verified` row counts as `skipped` when this tool never uploaded it (``uploaded_at`` is NULL).
`failed` and expired `uploading` rows are checked too: a PUT whose answer was lost may have
landed. The batch becomes `rolled_back` when every row is. A batch a runner is working on
(unexpired leases) is refused with BatchBusy. With ``write_back`` the application's migration
columns are cleared for every row rolled back, before the row is marked, so a crash in between
is finished by the next run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from r2migrate.errors import (
    BatchBusy,
    BucketError,
    ConfigError,
    ExitCode,
    Interrupted,
    ObjectChanged,
    SourceError,
)
from r2migrate.media.base import MediaSource, open_media_source
from r2migrate.rules import binding
from r2migrate.runtime.pool import drain
from r2migrate.runtime.retry import Requests
from r2migrate.s3.bucket import Bucket, ObjectInfo
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.recorder import (
    FLUSH_EVERY_S,
    FailureStreak,
    GroupedWrites,
    clear_write_back,
    ensure_write_back_columns,
)
from r2migrate.store.ledger import BatchStatus, FileRecord, FileStatus, State

log = logging.getLogger(__name__)


class RollbackOutcome(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would_delete"
    ALREADY_GONE = "already_gone"
    NOT_SENT = "not_sent"
    KEPT = "kept"
    REFUSED = "refused"
    ERROR = "error"

    @property
    def rolls_back(self) -> bool:
        """True when the row is marked `rolled_back` for this outcome (outside a dry run)."""
        return self in _ROLLS_BACK


_ROLLS_BACK = frozenset(
    {
        RollbackOutcome.DELETED,
        RollbackOutcome.ALREADY_GONE,
        RollbackOutcome.NOT_SENT,
        RollbackOutcome.KEPT,
    }
)


@dataclass(frozen=True)
class RollbackItem:
    row_id: int
    file_id: str
    object_key: str
    outcome: RollbackOutcome
    reason: str = ""
    size_bytes: int = 0
    status_before: FileStatus = FileStatus.PENDING
    etag: str | None = None  # of the object deleted (or that would be)


RollbackProgress = StageProgress  # the former name of rollback's progress


@dataclass(frozen=True)
class RollbackSummary:
    """What rollback did (or, in a dry run, would do) to one batch; ``items`` has every row
    that was still to roll back, in ledger order."""

    batch_id: str
    dry_run: bool
    counts: Mapping[str, int]  # every outcome, zeros included
    items: tuple[RollbackItem, ...]
    rows_rolled_back: int  # rows marked `rolled_back` by this call (0 in a dry run)
    rows_already_rolled_back: int  # rows a previous run had finished
    bytes_deleted: int  # or, in a dry run, that would be deleted
    batch_status: BatchStatus
    head_requests: int
    get_requests: int
    delete_requests: int
    elapsed_s: float
    aborted: str | None = None
    problems: tuple[RollbackItem, ...] = field(default=())  # refused and error items

    @property
    def ok(self) -> bool:
        """True when nothing was refused or failed: the batch is (or would be) fully undone."""
        return not self.problems and self.aborted is None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.FILES_FAILED

    @property
    def deleted(self) -> tuple[str, ...]:
        """Keys deleted, or in a dry run the keys that would be."""
        wanted = RollbackOutcome.WOULD_DELETE if self.dry_run else RollbackOutcome.DELETED
        return tuple(i.object_key for i in self.items if i.outcome is wanted)


@dataclass(frozen=True)
class _Done:
    item: RollbackItem
    heads: int = 0
    gets: int = 0
    deletes: int = 0
    retryable: bool = False


def _item(
    rec: FileRecord,
    outcome: RollbackOutcome,
    reason: str = "",
    *,
    etag: str | None = None,
) -> RollbackItem:
    return RollbackItem(
        row_id=rec.id,
        file_id=rec.file_id,
        object_key=rec.object_key,
        outcome=outcome,
        reason=reason,
        size_bytes=rec.size_bytes,
        status_before=rec.status,
        etag=etag,
    )


def _without_request(rec: FileRecord) -> RollbackItem | None:
    """The outcome of rows decided by the ledger alone, or None when the bucket must be asked."""
    if rec.status is FileStatus.PENDING and rec.attempts == 0:
        return _item(rec, RollbackOutcome.NOT_SENT, "never sent")
    if rec.status is FileStatus.CONFLICT:
        return _item(
            rec, RollbackOutcome.KEPT, "the key held a foreign object before this batch; untouched"
        )
    if rec.status is FileStatus.SKIPPED or (
        rec.status is FileStatus.VERIFIED and rec.uploaded_at is None
    ):
        return _item(
            rec,
            RollbackOutcome.KEPT,
            "the object was there before this batch (it already held this file's SHA-256)",
        )
    return None


class _Remover:
    """Proves one object is ours and deletes it; runs in worker threads, never touches the DB.

    A request failing transiently (503, SlowDown, a reset) is tried again with backoff, up to
    ``max_attempts``, before the row becomes an ``error``.
    """

    def __init__(
        self,
        bucket: Bucket,
        settings: Settings,
        stop: threading.Event,
        *,
        dry_run: bool,
    ) -> None:
        self.bucket = bucket
        # The source proves a row with no recorded digest ours (disk or the application's
        # MEDIA_URL); a rollback needs none otherwise, so an unset one only refuses such rows.
        self.media: MediaSource | None = open_media_source(settings)
        try:
            self.media.require_configured()
        except ConfigError:
            self.media = None
        self.settings = settings
        self.stop = stop
        self.dry_run = dry_run
        self.rng = random.Random()

    def remove(self, rec: FileRecord) -> _Done:
        ask = Requests(self.settings, self.stop, self.rng)

        def done(
            outcome: RollbackOutcome,
            reason: str = "",
            *,
            etag: str | None = None,
            retryable: bool = False,
        ) -> _Done:
            sent = ask.sent
            item = _item(rec, outcome, reason, etag=etag)
            return _Done(item, sent["HEAD"], sent["GET"], sent["DELETE"], retryable)

        try:
            info = ask("HEAD", lambda: self.bucket.head(rec.object_key))
        except BucketError as exc:
            return done(RollbackOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
        if info is None:
            return done(RollbackOutcome.ALREADY_GONE, "no object at the key")
        expected, size, why_not = self._expected(rec)
        if expected is None:
            return done(RollbackOutcome.REFUSED, why_not, etag=info.etag)
        foreign = _not_ours(info, expected, size)
        if foreign:
            return done(RollbackOutcome.REFUSED, foreign, etag=info.etag)
        if rec.etag and info.etag != rec.etag:
            # Rewritten since upload, with our metadata copied or re-sent: only its bytes can say
            # whether it is still the file this batch wrote.
            try:
                digest, got = ask("GET", lambda: self.bucket.get_sha256(rec.object_key))
            except BucketError as exc:
                if exc.code in ("NoSuchKey", "404"):
                    return done(RollbackOutcome.ALREADY_GONE, "deleted while it was checked")
                return done(RollbackOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
            if digest != expected or got != size:
                return done(
                    RollbackOutcome.REFUSED,
                    f"rewritten since upload (ETag {info.etag}, ledger {rec.etag}) and its "
                    f"content hashes to {digest}, not this file's {expected}",
                    etag=info.etag,
                )
        if self.dry_run:
            return done(RollbackOutcome.WOULD_DELETE, "holds this batch's SHA-256", etag=info.etag)
        try:
            ask("DELETE", lambda: self.bucket.delete_if_match(rec.object_key, info.etag))
        except ObjectChanged:
            # Replaced or removed between our HEAD and the DELETE. Some servers answer 412 for a
            # missing key too, so look again to tell the two apart.
            retried = ask.sent["DELETE"] > 1
            try:
                again = ask("HEAD", lambda: self.bucket.head(rec.object_key))
            except BucketError as exc:
                return done(RollbackOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
            if again is None and retried:
                # An earlier try of our DELETE landed and only its answer was lost.
                return done(
                    RollbackOutcome.DELETED,
                    "the DELETE was retried after a lost answer; the object is gone",
                    etag=info.etag,
                )
            if again is None:
                return done(RollbackOutcome.ALREADY_GONE, "deleted by someone else meanwhile")
            return done(
                RollbackOutcome.REFUSED,
                f"replaced between the check and the DELETE (ETag now {again.etag}); left alone",
                etag=again.etag,
            )
        except BucketError as exc:
            return done(RollbackOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
        return done(RollbackOutcome.DELETED, etag=info.etag)

    def close(self) -> None:
        if self.media is not None:
            self.media.close()

    def _expected(self, rec: FileRecord) -> tuple[str | None, int, str]:
        """(SHA-256, size) this batch's object must have; or (None, 0, why it cannot be known)."""
        known = rec.object_sha256 or rec.source_sha256
        if known is not None:
            return known, rec.size_bytes, ""
        # A failed row records no digest, yet its PUT may have landed with the lost answer; the
        # object is ours only if it carries the source's current SHA-256 (transfer's own rule).
        if self.media is None:
            return None, 0, "the ledger holds no SHA-256 for this file and no source is set"
        try:
            digest, size = self.media.sha256(rec.relative_path)
        except SourceError as exc:
            return None, 0, f"cannot prove it ours: source {exc.problem.value}: {exc.message}"
        return digest, size, ""


def _not_ours(info: ObjectInfo, expected: str, size: int) -> str:
    if info.sha256_hex is None:
        return "the object carries no sha256 metadata: not written by r2migrate"
    if info.sha256_hex != expected:
        return f"the object holds SHA-256 {info.sha256_hex}, not this batch's {expected}"
    if info.size_bytes != size:
        return f"the object is {info.size_bytes} bytes, the ledger says {size}"
    return ""


def rollback(
    settings: Settings,
    state: State,
    batch_id: str,
    *,
    dry_run: bool = False,
    on_progress: Callable[[StageProgress], None] | None = None,
    bucket: Bucket | None = None,
) -> RollbackSummary:
    """Undo one batch: delete the objects it wrote that still hold its SHA-256, mark the rows.

    ``dry_run`` asks the bucket (HEAD) what would be deleted and changes nothing: no DELETE, no
    row, no event, no write-back. Idempotent and resumable. Raises BatchNotFound, BatchBusy (a
    runner holds some of its files), and NoSuchBucket/AccessDenied/BucketUnavailable when the
    bucket cannot be used at all at the start; trouble with single objects is data (``refused``,
    ``error``), and an endpoint that keeps failing stops the run with ``aborted`` set.
    """
    started = time.monotonic()
    batch = state.get_batch(batch_id)  # BatchNotFound before anything else
    # Deletions happen only in the batch's own bucket; a configured other target is refused.
    settings = binding.settings_for_batch(settings, batch, need_source=False)
    if state.live_lease_count(batch_id):
        raise BatchBusy(
            f"Batch {batch_id} is being uploaded right now; it cannot be rolled back meanwhile.",
            hint=f"Stop the runner (or wait), then run `r2migrate rollback --batch {batch_id}`.",
        )
    records = state.batch_files(batch_id)
    todo = [r for r in records if r.status is not FileStatus.ROLLED_BACK]
    tally = _Tally(settings, state, batch_id, on_progress, dry_run=dry_run, files_total=len(todo))
    to_ask: list[FileRecord] = []
    for rec in todo:
        decided = _without_request(rec)
        if decided is None:
            to_ask.append(rec)
        else:
            tally.add(_Done(decided), rec)
    stop = threading.Event()  # set on an outage or Ctrl-C: removals waiting to retry give up
    if to_ask:
        bucket = Bucket.for_settings(settings, bucket)
        # One 503 must not stop the whole rollback.
        Requests(settings, stop, random.Random())("HEAD bucket", bucket.check)
    if settings.write_back and not dry_run:
        ensure_write_back_columns(settings, state)
    try:
        if to_ask:
            assert bucket is not None
            _remove_all(settings, bucket, stop, tally, to_ask)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"Rollback of {batch_id} interrupted; every deletion made so far is recorded.",
            hint=f"Finish it with `r2migrate rollback --batch {batch_id}`.",
        ) from exc
    finally:
        tally.flush()

    status = state.get_batch(batch_id).status if dry_run else state.finish_rollback(batch_id)
    summary = tally.summary(status, len(records) - len(todo), time.monotonic() - started)
    log.info(
        "%s batch %s: %s",
        "dry-run rollback of" if dry_run else "rolled back",
        batch_id,
        ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v) or "nothing to do",
        extra={"batch_id": batch_id, "outcome": "rollback"},
    )
    return summary


def _remove_all(
    settings: Settings,
    bucket: Bucket,
    stop: threading.Event,
    tally: _Tally,
    to_ask: Sequence[FileRecord],
) -> None:
    """Ask the bucket about each row in the worker threads; each result reaches ``tally`` here."""
    remover = _Remover(bucket, settings, stop, dry_run=tally.dry_run)
    try:
        untried = drain(
            remover.remove,
            to_ask,
            tally,
            workers=settings.workers,
            stop=stop,
            thread_name="r2m-rollback",
            poll_s=FLUSH_EVERY_S,
        )
    finally:
        remover.close()
    for rec in untried:  # only left when the endpoint kept failing
        tally.add(_Done(_item(rec, RollbackOutcome.ERROR, f"not tried: {tally.aborted}")), rec)


class _Tally:
    """Counts results and writes them (write-back clear, row, event) in groups, in one thread."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        batch_id: str,
        on_progress: Callable[[StageProgress], None] | None,
        *,
        dry_run: bool,
        files_total: int,
    ) -> None:
        self.settings = settings
        self.state = state
        self.batch_id = batch_id
        self.on_progress = on_progress
        self.dry_run = dry_run
        self.files_total = files_total
        self.counts: Counter[str] = Counter()
        self.items: list[RollbackItem] = []
        self.heads = self.gets = self.deletes = 0
        self.bytes_deleted = 0
        self.rows_rolled_back = 0
        self.aborted: str | None = None
        self._streak = FailureStreak(settings.workers)
        self._writes = GroupedWrites[tuple[RollbackItem, FileRecord]](self._write)

    def add(self, done: _Done, rec: FileRecord) -> None:
        item = done.item
        self.heads += done.heads
        self.gets += done.gets
        self.deletes += done.deletes
        if item.outcome in (RollbackOutcome.DELETED, RollbackOutcome.WOULD_DELETE):
            self.bytes_deleted += item.size_bytes
        if done.retryable:
            if self._streak.failed() and self.aborted is None:
                self.aborted = (
                    f"the endpoint failed for {self._streak.count} files in a row"
                    f" (each tried up to {self.settings.max_attempts} times)"
                )
                log.error("rollback of %s stopped: %s", self.batch_id, self.aborted)
        elif done.heads:
            self._streak.reset()
        if not self.dry_run:
            self._writes.add((item, rec))
        self._record(item)

    def _record(self, item: RollbackItem) -> None:
        self.counts[item.outcome.value] += 1
        self.items.append(item)
        if self.on_progress is not None:
            self.on_progress(
                StageProgress(
                    self.batch_id,
                    len(self.items),
                    self.files_total,
                    last_key=item.object_key,
                    last_status=item.outcome.value,
                    stage="rollback",
                )
            )

    def summary(
        self, status: BatchStatus, already_rolled_back: int, elapsed_s: float
    ) -> RollbackSummary:
        items = tuple(sorted(self.items, key=lambda i: i.row_id))
        return RollbackSummary(
            batch_id=self.batch_id,
            dry_run=self.dry_run,
            counts={o.value: self.counts.get(o.value, 0) for o in RollbackOutcome},
            items=items,
            rows_rolled_back=self.rows_rolled_back,
            rows_already_rolled_back=already_rolled_back,
            bytes_deleted=self.bytes_deleted,
            batch_status=status,
            head_requests=self.heads,
            get_requests=self.gets,
            delete_requests=self.deletes,
            elapsed_s=elapsed_s,
            aborted=self.aborted,
            problems=tuple(
                i for i in items if i.outcome in (RollbackOutcome.REFUSED, RollbackOutcome.ERROR)
            ),
        )

    def maybe_flush(self) -> None:
        self._writes.maybe_flush()

    def flush(self) -> None:
        self._writes.flush()

    def _write(self, batch: list[tuple[RollbackItem, FileRecord]]) -> None:
        marking = [(item, rec) for item, rec in batch if item.outcome.rolls_back]
        if self.settings.write_back:
            # Cleared before the rows are marked: were we to stop in between, the row is still
            # open and the next run clears again (the key cannot belong to another batch yet).
            clear_write_back(self.settings, self.state, [rec for _, rec in marking])
        changed = self.state.mark_rolled_back(
            self.batch_id,
            [(item.row_id, rec.status, item.outcome.value, _detail(item)) for item, rec in marking],
        )
        self.rows_rolled_back += len(changed)
        lost = [item for item, _ in marking if item.row_id not in changed]
        # Refusals, errors, and rows a runner took meanwhile (a DELETE that happened is history
        # whatever became of the row) get their event here; mark_rolled_back wrote the others.
        self.state.add_events(
            self.batch_id,
            "rollback",
            [
                (item.row_id, item.outcome.value, _detail(item))
                for item, _ in batch
                if not item.outcome.rolls_back or item.row_id not in changed
            ],
        )
        for item in lost:  # a runner claimed the row meanwhile: report it, do not hide it
            self.counts[item.outcome.value] -= 1
            index = self.items.index(item)
            self.items[index] = RollbackItem(
                row_id=item.row_id,
                file_id=item.file_id,
                object_key=item.object_key,
                outcome=RollbackOutcome.ERROR,
                reason="the row changed while it was rolled back; run rollback again",
                size_bytes=item.size_bytes,
                status_before=item.status_before,
                etag=item.etag,
            )
            self.counts[RollbackOutcome.ERROR.value] += 1


def _detail(item: RollbackItem) -> dict[str, Any]:
    detail: dict[str, Any] = {"key": item.object_key, "status_before": item.status_before.value}
    if item.reason:
        detail["reason"] = item.reason
    if item.etag:
        detail["etag"] = item.etag
    return detail
