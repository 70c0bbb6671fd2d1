"""The toolkit's own tables, batches and files: the per-file ledger every stage reads and writes.

Must not touch source files or the bucket. The store (this module, db.py, history.py, queue.py,
catalog.py) is the only code speaking SQL to schema ``state_schema``, and db.py the one place
psycopg exceptions are translated into the error tree.

``State`` is the one handle the rest of the toolkit uses. It is made of mixins sharing one
connection and ``self``, so a transaction may span their parts (a verify verdict and its events
and counters commit together): ``Database`` (db.py: connection, schema version and upgrade,
locks), ``History`` (history.py: inventory snapshots, events, verify and rollback verdicts,
counters) and ``Queue`` (queue.py: lease owners, dead-lease takeover, the job queue's rows).
This module adds batches and the files in them: planning, claims and leases, outcomes, repairs.
The names below it used to live here; they are re-exported, so ``from r2migrate.store.ledger
import ...`` keeps working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from r2migrate.errors import BatchNotFound
from r2migrate.rules.binding import SourceSpec, Target
from r2migrate.store.db import (
    SCHEMA_VERSION,
    Connection,
    Database,
    LedgerState,
    LedgerStatus,
    _migration_files,
    complete_privilege_error,
    connect,
    grants_sql,
    ledger_sql,
    ledger_tables,
    privilege_error,
    procrastinate_version,
    same_minor,
    translate_db_errors,
)
from r2migrate.store.history import History
from r2migrate.store.queue import Queue, QueueStatus, new_owner_id
from r2migrate.store.rows import (
    DONE_STATUSES,
    REPAIRABLE_FAILURE_CODES,
    REPAIRABLE_VERIFY_CODES,
    Batch,
    BatchStatus,
    FileRecord,
    FileStatus,
    MediaFile,
    NewFile,
    Outcome,
    Repair,
    batch_from_row,
    file_from_row,
)

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = [
    "DONE_STATUSES",
    "REPAIRABLE_FAILURE_CODES",
    "REPAIRABLE_VERIFY_CODES",
    "SCHEMA_VERSION",
    "Batch",
    "BatchStatus",
    "Connection",
    "Database",
    "FileRecord",
    "FileStatus",
    "LedgerState",
    "LedgerStatus",
    "MediaFile",
    "NewFile",
    "Outcome",
    "QueueStatus",
    "Repair",
    "State",
    "_migration_files",
    "complete_privilege_error",
    "connect",
    "grants_sql",
    "ledger_sql",
    "ledger_tables",
    "new_owner_id",
    "open_state",
    "privilege_error",
    "procrastinate_version",
    "same_minor",
    "translate_db_errors",
]

log = logging.getLogger(__name__)


class State(History, Queue):
    """A handle on the toolkit's schema over one connection (not shared between threads)."""

    # -- batches --------------------------------------------------------------------------------

    def live_object_keys(self, target: Target) -> set[str]:
        """Keys of `target` already queued or done in some batch (rolled-back ones excluded)."""
        if self.schema_version() == 0:  # a dry run on a database never migrated
            return set()
        with translate_db_errors("reading planned keys"):
            rows = self.conn.execute(
                self._q(
                    "SELECT object_key FROM {s}.files"
                    " WHERE target_id = %s AND status <> 'rolled_back'"
                ),
                (target.target_id,),
            ).fetchall()
        return {r["object_key"] for r in rows}

    def next_batch_id(self) -> str:
        return self.new_batch_ids(1)[0]

    def new_batch_ids(self, count: int) -> list[str]:
        """``count`` fresh batch ids (the server's UTC time plus a random suffix), one query."""
        with translate_db_errors("naming a batch"):
            row = self.conn.execute(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD-HH24MISS') AS t"
            ).fetchone()
        assert row is not None
        # Distinct within the call: the ids share one second, and 2,000 random 6-hex suffixes
        # would collide about one time in eight.
        suffixes: dict[str, None] = {}
        while len(suffixes) < count:
            suffixes[uuid.uuid4().hex[:6]] = None
        return [f"b{row['t']}-{suffix}" for suffix in suffixes]

    def create_batch(
        self,
        batch_id: str,
        files: Sequence[NewFile],
        *,
        batch_size: int,
        target: Target,
        source: SourceSpec,
        settings: Mapping[str, Any],
    ) -> Batch:
        """Store a batch bound to `target` and `source`; every later command acts on those."""
        self.create_batches(
            [(batch_id, len(files))],
            ((batch_id, f) for f in files),
            batch_size=batch_size,
            target=target,
            source=source,
            settings=settings,
        )
        return self.get_batch(batch_id)

    def create_batches(
        self,
        batches: Sequence[tuple[str, int]],
        files: Iterable[tuple[str, NewFile]],
        *,
        batch_size: int,
        target: Target,
        source: SourceSpec,
        settings: Mapping[str, Any],
    ) -> None:
        """Store several batches in one transaction: one statement for the batches, one COPY
        for their files, one for the events and one for the counts (not a round trip a row).

        ``batches``: (batch id, number of files) each; ``files``: (batch id, file), streamed
        (made while they are copied, so a plan need not hold them all). Their ``created_at``
        rises in the order given, so they run in that order.
        """
        if not batches:
            return
        ids = [batch_id for batch_id, _ in batches]
        label = ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"
        with translate_db_errors(f"creating batch {label}"), self.conn.transaction():
            with self.conn.cursor() as cur:
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.batches"
                        " (batch_id, batch_size, bucket_name, location, endpoint_url,"
                        "  source_kind, media_root, media_url, settings, created_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                        "  now() + make_interval(secs => %s))"
                    ),
                    [
                        (
                            batch_id,
                            batch_size,
                            target.bucket_name,
                            target.location,
                            target.endpoint_url,
                            source.kind,
                            source.media_root,
                            source.media_url,
                            json.dumps(settings, default=str),
                            i * 1e-6,
                        )
                        for i, batch_id in enumerate(ids)
                    ],
                )
                self._copy_files(cur, files, target)
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                        " VALUES (%s, NULL, 'batch', 'planned', %s)"
                    ),
                    [(b, json.dumps({"files": count})) for b, count in batches],
                )
            self._refresh_counts_of(ids)

    def _copy_files(self, cur: Any, files: Iterable[tuple[str, NewFile]], target: Target) -> None:
        with cur.copy(
            self._q(
                "COPY {s}.files (batch_id, target_id, file_id, source_refs, relative_path,"
                " object_key, size_bytes, mtime_ns, content_type, content_encoding, status,"
                " source_sha256, error_code, error_message) FROM STDIN"
            )
        ) as copy:
            target_id = target.target_id
            for batch_id, f in files:
                copy.write_row(
                    (
                        batch_id,
                        target_id,
                        f.file_id,
                        json.dumps(list(f.source_refs)),
                        f.relative_path,
                        f.object_key,
                        f.size_bytes,
                        f.mtime_ns,
                        f.content_type,
                        f.content_encoding,
                        f.status.value,
                        f.source_sha256,
                        f.error_code,
                        f.error_message,
                    )
                )

    def get_batch(self, batch_id: str) -> Batch:
        with translate_db_errors(f"reading batch {batch_id}"):
            row = self.conn.execute(
                self._q("SELECT " + _BATCH_COLUMNS + " FROM {s}.batches WHERE batch_id = %s"),
                (batch_id,),
            ).fetchone()
        if row is None:
            raise BatchNotFound(f"No batch {batch_id!r} in schema {self.schema!r}.")
        return batch_from_row(row)

    def list_batches(self) -> list[Batch]:
        with translate_db_errors("listing batches"):
            rows = self.conn.execute(
                self._q(
                    "SELECT " + _BATCH_COLUMNS + " FROM {s}.batches ORDER BY created_at, batch_id"
                )
            ).fetchall()
        return [batch_from_row(r) for r in rows]

    def batches_to_run(self) -> list[Batch]:
        """Batches with work left: planned, partial, failed, or running (maybe abandoned)."""
        return [
            b
            for b in self.list_batches()
            if b.status
            in (BatchStatus.PLANNED, BatchStatus.RUNNING, BatchStatus.PARTIAL, BatchStatus.FAILED)
        ]

    def set_batch_status(
        self, batch_id: str, status: BatchStatus, *, last_error: str | None = None
    ) -> None:
        stamp = {
            BatchStatus.RUNNING: ", started_at = coalesce(started_at, now()), completed_at = NULL",
            BatchStatus.COMPLETED: ", completed_at = now()",
            BatchStatus.PARTIAL: ", completed_at = now()",
            BatchStatus.FAILED: ", completed_at = now()",
        }.get(status, "")
        with translate_db_errors(f"updating batch {batch_id}"):
            self.conn.execute(
                self._q(
                    "UPDATE {s}.batches SET status = %s, last_error = %s"
                    + stamp
                    + " WHERE batch_id = %s"
                ),
                (status.value, last_error, batch_id),
            )
            self.add_event(batch_id, None, "batch", status.value, {"error": last_error})

    def refresh_counts(self, batch_id: str) -> Batch:
        with translate_db_errors(f"counting batch {batch_id}"):
            self._refresh_counts(batch_id)
        return self.get_batch(batch_id)

    # -- per-file ledger ------------------------------------------------------------------------

    def batch_files(self, batch_id: str, *, status: FileStatus | None = None) -> list[FileRecord]:
        query = "SELECT * FROM {s}.files WHERE batch_id = %s"
        params: list[Any] = [batch_id]
        if status is not None:
            query += " AND status = %s"
            params.append(status.value)
        with translate_db_errors(f"reading files of {batch_id}"):
            rows = self.conn.execute(self._q(query + " ORDER BY id"), params).fetchall()
        return [file_from_row(r) for r in rows]

    def requeue_failed(self, batch_id: str) -> int:
        """Give failed files another round of attempts (conflicts stay for the operator)."""
        with translate_db_errors(f"requeueing failed files of {batch_id}"):
            cur = self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET status = 'pending', next_attempt_at = NULL,"
                    " updated_at = now() WHERE batch_id = %s AND status = 'failed'"
                ),
                (batch_id,),
            )
        return cur.rowcount

    def repair_candidates(self, batch_id: str) -> list[FileRecord]:
        """Rows a repair may send again: disproven by verify (missing, differ, source changed)
        though in a done status, or failed because the source no longer matched the ledger."""
        with translate_db_errors(f"reading files of {batch_id} to repair"):
            rows = self.conn.execute(
                self._q(
                    "SELECT * FROM {s}.files WHERE batch_id = %s AND ("
                    " (status IN ('uploaded', 'skipped', 'verified')"
                    "  AND error_code = ANY(%s))"
                    " OR (status = 'failed' AND error_code = ANY(%s))) ORDER BY id"
                ),
                (batch_id, list(REPAIRABLE_VERIFY_CODES), list(REPAIRABLE_FAILURE_CODES)),
            ).fetchall()
        return [file_from_row(r) for r in rows]

    def requeue_for_repair(self, batch_id: str, repairs: Sequence[Repair]) -> set[int]:
        """Put repaired rows back to `pending` with the source as it was just measured, or mark
        them `conflict` (a foreign object holds the key); one 'repair' event each.

        A row changes only if it still has the status the caller saw (a runner or a rollback
        that got there first wins); the ids changed are returned, and only they get an event.
        """
        changed: set[int] = set()
        if not repairs:
            return changed
        with translate_db_errors(f"requeueing files of {batch_id}"), self.conn.transaction():
            with self.conn.cursor() as cur:
                for r in repairs:
                    cur.execute(
                        self._q(
                            "UPDATE {s}.files SET status = %s, size_bytes = %s, mtime_ns = %s,"
                            " source_sha256 = %s, object_sha256 = NULL, etag = NULL,"
                            " part_size_bytes = NULL, verified_at = NULL, next_attempt_at = NULL,"
                            " error_code = %s, error_message = %s, updated_at = now()"
                            " WHERE id = %s AND batch_id = %s AND status = %s"
                        ),
                        (
                            r.status.value,
                            r.size_bytes,
                            r.mtime_ns,
                            r.source_sha256,
                            None if r.status is FileStatus.PENDING else "conflict",
                            r.message or None,
                            r.row_id,
                            batch_id,
                            r.seen.value,
                        ),
                    )
                    if cur.rowcount == 1:
                        changed.add(r.row_id)
            self._insert_events(
                batch_id,
                "repair",
                [(r.row_id, r.outcome, r.detail) for r in repairs if r.row_id in changed],
            )
            self._refresh_counts(batch_id)
        return changed

    def open_file_count(self, batch_id: str) -> int:
        """Files still pending or in flight (by anyone)."""
        with translate_db_errors(f"counting open files of {batch_id}"):
            row = self.conn.execute(
                self._q(
                    "SELECT count(*) AS n FROM {s}.files WHERE batch_id = %s"
                    " AND status IN ('pending', 'uploading')"
                ),
                (batch_id,),
            ).fetchone()
        return int(row["n"]) if row else 0

    def claim_files(
        self,
        batch_id: str,
        *,
        owner: str,
        limit: int,
        lease_s: float,
        include_failed: bool = False,
    ) -> list[FileRecord]:
        """Atomically take up to `limit` files to send: pending, failed, or abandoned uploads.

        The row becomes `uploading` (the intent) and an 'attempt' event 'sending' is appended,
        both committed before any byte is sent, so a crash leaves evidence that a resume
        resolves by HEAD and the history shows every PUT that may have landed.
        """
        wanted = "status = 'pending' OR (status = 'uploading' AND lease_expires_at < now())"
        if include_failed:
            wanted += " OR status = 'failed'"
        # One statement, so one round trip and atomic on its own (autocommit): the rows become
        # `uploading` and their 'sending' events are written from the same RETURNING, never
        # one without the other. A connection in a transaction of its own keeps it.
        with translate_db_errors(f"claiming files of {batch_id}"), self._atomic():
            rows = self.conn.execute(
                self._q(
                    "WITH picked AS ("
                    "  SELECT id, status AS previous FROM {s}.files"
                    "  WHERE batch_id = %s AND (" + wanted + ")"
                    "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED),"
                    " claimed AS ("
                    "  UPDATE {s}.files f SET status = 'uploading', lease_owner = %s,"
                    "   lease_expires_at = now() + make_interval(secs => %s), updated_at = now()"
                    "  FROM picked WHERE f.id = picked.id"
                    "  RETURNING " + _CLAIM_COLUMNS + ", picked.previous),"
                    # The intent in the history too, before any byte is sent: a PUT that lands
                    # just before a kill -9 still shows as an attempt, not only as a "resolve".
                    " intent AS ("
                    "  INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                    "  SELECT c.batch_id, c.id, 'attempt', 'sending',"
                    "   jsonb_build_object('owner', c.lease_owner, 'previous', c.previous)"
                    "  FROM claimed c)"
                    " SELECT * FROM claimed ORDER BY id"
                ),
                (batch_id, limit, owner, lease_s),
            ).fetchall()
        return [file_from_row(r) for r in rows]

    @contextlib.contextmanager
    def pipelined(self, doing: str) -> Iterator[None]:
        """Statements run inside go out together and wait only where a result is read (fewer
        round trips); an error of any of them surfaces by the end, as a DatabaseError."""
        with translate_db_errors(doing), self.conn.pipeline():
            yield

    def _atomic(self) -> contextlib.AbstractContextManager[object]:
        """Nothing to add under autocommit (one statement is its own transaction); otherwise a
        transaction block, as ``conn.transaction()`` gave every caller before."""
        if self.conn.autocommit:
            return contextlib.nullcontext()
        return self.conn.transaction()

    def renew_leases(self, row_ids: Sequence[int], *, owner: str, lease_s: float) -> None:
        if not row_ids:
            return
        with translate_db_errors("renewing leases"):
            self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET lease_expires_at = now() + make_interval(secs => %s)"
                    " WHERE id = ANY(%s) AND lease_owner = %s AND status = 'uploading'"
                ),
                (lease_s, list(row_ids), owner),
            )

    def release_files(self, row_ids: Sequence[int], *, owner: str) -> None:
        """Give back claimed files that were never started (Ctrl-C) so nothing waits on a lease."""
        if not row_ids:
            return
        with translate_db_errors("releasing files"):
            self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET status = CASE WHEN attempts > 0 THEN 'failed'"
                    " ELSE 'pending' END, lease_owner = NULL, lease_expires_at = NULL,"
                    " updated_at = now()"
                    " WHERE id = ANY(%s) AND lease_owner = %s AND status = 'uploading'"
                ),
                (list(row_ids), owner),
            )

    def expire_leases(self, batch_id: str, *, owner: str) -> int:
        """End this owner's leases on rows still `uploading` (outcome unknown: HEAD decides)."""
        with translate_db_errors("expiring leases"):
            cur = self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET lease_expires_at = now() - interval '1 second'"
                    " WHERE batch_id = %s AND lease_owner = %s AND status = 'uploading'"
                ),
                (batch_id, owner),
            )
        return cur.rowcount

    def record_outcomes(self, batch_id: str, outcomes: Sequence[Outcome], *, owner: str) -> int:
        """Write a group of outcomes in one transaction: one pipeline, one round trip.

        The arrays go in binary (``%b``): psycopg builds text arrays in Python, escaping every
        quoted ETag, which cost about three times the client CPU per row.

        Only rows this owner still holds are updated: if another runner took a lease over, its
        result wins and ours stays history (events).
        """
        if not outcomes:
            return 0
        columns = _outcome_columns(outcomes)
        events = [
            (batch_id, o.row_id, kind, outcome, json.dumps(dict(detail), default=str))
            for o in outcomes
            for kind, outcome, detail in o.events
        ]
        # A pipeline: BEGIN, the update, the events, the counters and COMMIT go out together,
        # one round trip instead of five, and stay one transaction.
        with (
            translate_db_errors(f"recording outcomes for {batch_id}"),
            self.conn.pipeline(),
            self.conn.transaction(),
        ):
            updated_cur = self.conn.execute(
                self._q(
                    "UPDATE {s}.files f SET status = v.status, attempts = f.attempts + v.attempts,"
                    " source_sha256 = coalesce(v.source_sha256, f.source_sha256),"
                    " object_sha256 = coalesce(v.object_sha256, f.object_sha256),"
                    " etag = coalesce(v.etag, f.etag),"
                    " part_size_bytes = coalesce(v.part_size, f.part_size_bytes),"
                    " size_bytes = coalesce(v.size_bytes, f.size_bytes),"
                    " mtime_ns = coalesce(v.mtime_ns, f.mtime_ns),"
                    " error_code = v.error_code, error_message = v.error_message,"
                    " lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),"
                    " uploaded_at = CASE WHEN v.status IN ('uploaded', 'skipped') THEN now()"
                    "   ELSE f.uploaded_at END"
                    " FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], %b::text[],"
                    "   %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[],"
                    "   %b::bigint[])"
                    "   AS v(id, status, attempts, source_sha256, object_sha256, etag, part_size,"
                    "        size_bytes, error_code, error_message, mtime_ns)"
                    " WHERE f.id = v.id AND f.lease_owner = %s"
                    " RETURNING f.id"
                ),
                [list(c) for c in columns] + [owner],
            )
            if events:
                self.conn.execute(
                    self._q(
                        "INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                        " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[],"
                        "   %b::text[]::jsonb[])"
                    ),
                    [list(c) for c in zip(*events, strict=True)],
                )
            self._refresh_counts(batch_id)
        updated = updated_cur.fetchall()  # the pipeline has synced: no round trip here
        if len(updated) != len(outcomes):
            lost = {o.row_id for o in outcomes} - {r["id"] for r in updated}
            log.warning("rows %s are no longer leased by this runner", sorted(lost))
        return len(updated)


def _outcome_columns(outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
    """The outcomes as columns (one tuple per column), in record_outcomes' unnest order."""
    return list(
        zip(
            *[
                (
                    o.row_id,
                    o.status.value,
                    o.attempts_made,
                    o.source_sha256,
                    o.object_sha256,
                    o.etag,
                    o.part_size_bytes,
                    o.size_bytes,
                    o.error_code,
                    o.error_message,
                    o.mtime_ns,
                )
                for o in outcomes
            ],
            strict=True,
        )
    )


# What a runner needs of a claimed row: the timestamps stay in the database, unparsed.
_CLAIM_COLUMNS = (
    "f.id, f.batch_id, f.file_id, f.relative_path, f.object_key, f.size_bytes, f.mtime_ns,"
    " f.content_type, f.content_encoding, f.status, f.attempts, f.source_sha256,"
    " f.object_sha256, f.etag, f.part_size_bytes, f.error_code, f.error_message,"
    " f.lease_owner, f.source_refs"
)

# Every batches column but the (JSON) settings, which only a report needs: reading the batch
# after each group of outcomes should not parse it.
_BATCH_COLUMNS = (
    "batch_id, status, dry_run, batch_size, total_files, uploaded_files, verified_files,"
    " failed_files, skipped_files, conflict_files, total_bytes, uploaded_bytes, bucket_name,"
    " location, created_at, started_at, completed_at, last_error, endpoint_url, source_kind,"
    " media_root, media_url"
)


@contextmanager
def open_state(
    settings: Settings, *, migrate: bool = False, require_ledger: bool = True
) -> Iterator[State]:
    """The ledger for ``settings``, for every front end. ``migrate`` only for what creates the
    ledger (a plan that stores batches, ``db upgrade``); every other path reads it and gets
    ``SchemaNotReady`` (exit 4) when it is missing or older, never issuing DDL."""
    settings.require("database_url")
    with State.open(
        settings.database_url,
        schema=settings.state_schema,
        migrate=migrate,
        require_ledger=require_ledger,
    ) as state:
        yield state
