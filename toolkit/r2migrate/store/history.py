"""What happened, for audits and reports: inventory snapshots, events, verify and rollback results,
and the per-batch counters the reports read.

Must not claim files or change what is still to send (ledger.py does), nor touch the job queue
(queue.py); it writes ``inventory_runs``, ``inventory_files`` and ``events``, and of ``files``
only the verdicts of verify and rollback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from r2migrate.errors import BatchNotFound
from r2migrate.rules.binding import Target
from r2migrate.store.db import Database, translate_db_errors
from r2migrate.store.rows import BatchStatus, FileStatus, MediaFile


class History(Database):
    """The history part of ``State`` (ledger.py), over the same connection."""

    # -- inventory ------------------------------------------------------------------------------

    def save_inventory(
        self,
        files: Iterable[MediaFile],
        *,
        media_root: str,
        references: Sequence[str],
        location: str,
    ) -> int:
        """Store one inventory snapshot with COPY (streams); returns its run id."""
        with translate_db_errors("saving the inventory"), self.conn.transaction():
            row = self.conn.execute(
                self._q(
                    "INSERT INTO {s}.inventory_runs (media_root, references_used, location)"
                    " VALUES (%s, %s, %s) RETURNING run_id"
                ),
                (media_root, list(references), location),
            ).fetchone()
            assert row is not None
            run_id = int(row["run_id"])
            copy_sql = self._q(
                "COPY {s}.inventory_files (run_id, file_id, source_ref, source_id, relative_path,"
                " object_key, size_bytes, mtime_ns, content_type, content_encoding, problems,"
                " disk_path) FROM STDIN"
            )
            with self.conn.cursor().copy(copy_sql) as copy:
                for f in files:
                    copy.write_row(
                        (
                            run_id,
                            f.file_id,
                            f.source_ref,
                            f.source_id,
                            f.relative_path,
                            f.object_key,
                            f.size_bytes,
                            f.mtime_ns,
                            f.content_type,
                            f.content_encoding,
                            list(f.problems),
                            f.disk_path if f.disk_path != f.relative_path else None,
                        )
                    )
            return run_id

    def set_inventory_summary(self, run_id: int, summary: Mapping[str, Any]) -> None:
        with translate_db_errors("saving the inventory summary"):
            self.conn.execute(
                self._q("UPDATE {s}.inventory_runs SET summary = %s WHERE run_id = %s"),
                (json.dumps(summary), run_id),
            )

    def latest_inventory_run(
        self, *, source: str | None = None, location: str | None = None
    ) -> int | None:
        """The newest snapshot, or the newest taken of `source` (MEDIA_ROOT or media URL) with
        `location`: keys and sizes are only valid for the source and prefix they came from."""
        if self.schema_version() == 0:
            return None
        query = "SELECT max(run_id) AS r FROM {s}.inventory_runs WHERE true"
        params: list[Any] = []
        if source is not None:
            query += " AND media_root = %s"
            params.append(source)
        if location is not None:
            query += " AND location = %s"
            params.append(location)
        with translate_db_errors("reading the inventory"):
            row = self.conn.execute(self._q(query), params).fetchone()
        return int(row["r"]) if row and row["r"] is not None else None

    def iter_inventory(self, run_id: int) -> Iterator[MediaFile]:
        """Stream one snapshot in file_id order with a server-side cursor."""
        with (
            translate_db_errors("reading the inventory"),
            self.conn.transaction(),
            self.conn.cursor(name="r2m_inventory") as cur,
        ):
            cur.execute(
                self._q(
                    "SELECT file_id, source_ref, source_id, relative_path, object_key, size_bytes,"
                    " mtime_ns, content_type, content_encoding, problems, disk_path"
                    " FROM {s}.inventory_files WHERE run_id = %s ORDER BY file_id"
                ),
                (run_id,),
            )
            # The few distinct references, types and encodings: one string each, shared by
            # every row that holds it (plan keeps every row of a snapshot in memory).
            shared: dict[str | None, str | None] = {}
            for r in cur:
                path, key = r["relative_path"], r["object_key"]
                yield MediaFile(
                    file_id=r["file_id"],
                    source_ref=shared.setdefault(r["source_ref"], r["source_ref"]),
                    source_id=r["source_id"],
                    relative_path=path,
                    object_key=path if key == path else key,  # most keys: the name itself
                    size_bytes=r["size_bytes"],
                    mtime_ns=r["mtime_ns"],
                    content_type=shared.setdefault(r["content_type"], r["content_type"]),
                    content_encoding=shared.setdefault(
                        r["content_encoding"], r["content_encoding"]
                    ),
                    problems=tuple(r["problems"]),
                    disk_path=r["disk_path"],
                )

    # -- events ---------------------------------------------------------------------------------

    def add_event(
        self,
        batch_id: str | None,
        file_row_id: int | None,
        kind: str,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        with translate_db_errors("recording an event"):
            self.conn.execute(
                self._q(
                    "INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ),
                (batch_id, file_row_id, kind, outcome, json.dumps(detail or {}, default=str)),
            )

    def events(
        self,
        batch_id: str | None = None,
        *,
        kind: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """History rows (id, at, batch_id, file_row_id, kind, outcome, detail), filtered."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("batch_id", batch_id), ("kind", kind), ("outcome", outcome)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if since is not None:
            where.append("at > %s")
            params.append(since)
        query = "SELECT * FROM {s}.events"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        with translate_db_errors("reading events"):
            return self.conn.execute(self._q(query), params).fetchall()

    def add_events(
        self,
        batch_id: str | None,
        kind: str,
        events: Sequence[tuple[int | None, str, Mapping[str, Any]]],
    ) -> None:
        """Append a group of events (row id or None, outcome, detail) in one transaction."""
        if not events:
            return
        with translate_db_errors("recording events"), self.conn.transaction():
            self._insert_events(batch_id, kind, events)

    def _insert_events(
        self,
        batch_id: str | None,
        kind: str,
        events: Sequence[tuple[int | None, str, Mapping[str, Any]]],
    ) -> None:
        if not events:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ),
                [
                    (batch_id, row_id, kind, outcome, json.dumps(dict(detail), default=str))
                    for row_id, outcome, detail in events
                ],
            )

    # -- counters -------------------------------------------------------------------------------

    def _refresh_counts(self, batch_id: str) -> None:
        self.conn.execute(
            self._q(
                "UPDATE {s}.batches b SET"
                " total_files = c.total, uploaded_files = c.uploaded, verified_files = c.verified,"
                " failed_files = c.failed, skipped_files = c.skipped, conflict_files = c.conflict,"
                " total_bytes = c.total_bytes, uploaded_bytes = c.uploaded_bytes"
                " FROM (SELECT count(*) AS total,"
                "   count(*) FILTER (WHERE status IN ('uploaded','verified')) AS uploaded,"
                "   count(*) FILTER (WHERE status = 'verified') AS verified,"
                "   count(*) FILTER (WHERE status = 'failed') AS failed,"
                "   count(*) FILTER (WHERE status = 'skipped') AS skipped,"
                "   count(*) FILTER (WHERE status = 'conflict') AS conflict,"
                "   coalesce(sum(size_bytes), 0) AS total_bytes,"
                "   coalesce(sum(size_bytes) FILTER (WHERE status IN ('uploaded','verified')), 0)"
                "     AS uploaded_bytes"
                "  FROM {s}.files WHERE batch_id = %s) c"
                " WHERE b.batch_id = %s"
            ),
            (batch_id, batch_id),
        )

    def _refresh_counts_of(self, batch_ids: Sequence[str]) -> None:
        """Recount the files of these batches into their rows (one statement for all)."""
        self.conn.execute(
            self._q(
                "UPDATE {s}.batches b SET"
                " total_files = c.total, uploaded_files = c.uploaded, verified_files = c.verified,"
                " failed_files = c.failed, skipped_files = c.skipped, conflict_files = c.conflict,"
                " total_bytes = c.total_bytes, uploaded_bytes = c.uploaded_bytes"
                " FROM (SELECT ids.batch_id, count(f.batch_id) AS total,"
                "   count(*) FILTER (WHERE f.status IN ('uploaded','verified')) AS uploaded,"
                "   count(*) FILTER (WHERE f.status = 'verified') AS verified,"
                "   count(*) FILTER (WHERE f.status = 'failed') AS failed,"
                "   count(*) FILTER (WHERE f.status = 'skipped') AS skipped,"
                "   count(*) FILTER (WHERE f.status = 'conflict') AS conflict,"
                "   coalesce(sum(f.size_bytes), 0) AS total_bytes,"
                "   coalesce(sum(f.size_bytes)"
                "     FILTER (WHERE f.status IN ('uploaded','verified')), 0) AS uploaded_bytes"
                "  FROM unnest(%s::text[]) AS ids(batch_id)"
                "  LEFT JOIN {s}.files f ON f.batch_id = ids.batch_id"
                "  GROUP BY ids.batch_id) c"
                " WHERE b.batch_id = c.batch_id"
            ),
            (list(batch_ids),),
        )

    # -- verify and rollback --------------------------------------------------------------------

    def live_lease_count(self, batch_id: str) -> int:
        """Files of a batch that a runner holds right now (uploading, lease not yet expired)."""
        with translate_db_errors(f"checking leases of {batch_id}"):
            row = self.conn.execute(
                self._q(
                    "SELECT count(*) AS n FROM {s}.files WHERE batch_id = %s"
                    " AND status = 'uploading' AND lease_expires_at > now()"
                ),
                (batch_id,),
            ).fetchone()
        return int(row["n"]) if row else 0

    def known_object_keys(self, target: Target, keys: Sequence[str]) -> set[str]:
        """Which of `keys` some live (not rolled back) row of `target` names; one indexed query."""
        if not keys:
            return set()
        with translate_db_errors("looking up object keys"):
            rows = self.conn.execute(
                self._q(
                    "SELECT object_key FROM {s}.files WHERE target_id = %s"
                    " AND object_key = ANY(%s) AND status <> 'rolled_back'"
                ),
                (target.target_id, list(keys)),
            ).fetchall()
        return {r["object_key"] for r in rows}

    def verify_problem_counts(self) -> dict[str, dict[str, int]]:
        """Per batch, files whose last check failed, by outcome (``{"b1": {"differ": 2}}``)."""
        with translate_db_errors("counting verification problems"):
            rows = self.conn.execute(
                self._q(
                    "SELECT batch_id, substr(error_code, 8) AS outcome, count(*) AS n"
                    " FROM {s}.files WHERE error_code LIKE %s GROUP BY 1, 2"
                ),
                ("verify:%",),
            ).fetchall()
        found: dict[str, dict[str, int]] = {}
        for r in rows:
            found.setdefault(r["batch_id"], {})[r["outcome"]] = int(r["n"])
        return found

    def record_verification(
        self,
        batch_id: str,
        *,
        proven: Sequence[tuple[int, str | None]],
        disproven: Sequence[tuple[int, str, str]],
        events: Sequence[tuple[int | None, str, Mapping[str, Any]]],
    ) -> None:
        """Write one group of verify results in one transaction.

        ``proven`` (row id, ETag seen) rows become `verified` with ``verified_at = now()``.
        ``disproven`` (row id, error code, message) rows that were `verified` fall back to what
        they were before (`skipped` when this tool never uploaded them, else `uploaded`), so
        `verified` always means "the last check passed". Only rows in a done status change:
        a row rolled back or re-queued meanwhile is left alone. ``events`` are appended as
        kind 'verify' (row id or None, outcome, detail).
        """
        done = "status IN ('uploaded', 'skipped', 'verified')"
        with translate_db_errors(f"recording verification of {batch_id}"), self.conn.transaction():
            with self.conn.cursor() as cur:
                if proven:
                    cur.executemany(
                        self._q(
                            "UPDATE {s}.files SET status = 'verified', verified_at = now(),"
                            " etag = coalesce(%s, etag),"
                            " error_message = CASE WHEN error_code LIKE 'verify:%%' THEN NULL"
                            "   ELSE error_message END,"
                            " error_code = CASE WHEN error_code LIKE 'verify:%%' THEN NULL"
                            "   ELSE error_code END,"
                            " updated_at = now() WHERE id = %s AND " + done
                        ),
                        [(etag, row_id) for row_id, etag in proven],
                    )
                if disproven:
                    cur.executemany(
                        self._q(
                            "UPDATE {s}.files SET status = CASE WHEN status <> 'verified'"
                            "   THEN status WHEN uploaded_at IS NULL THEN 'skipped'"
                            "   ELSE 'uploaded' END,"
                            " error_code = %s, error_message = %s, updated_at = now()"
                            " WHERE id = %s AND " + done
                        ),
                        [(code, message[:2000], row_id) for row_id, code, message in disproven],
                    )
            self._insert_events(batch_id, "verify", events)
            self._refresh_counts(batch_id)

    def mark_rolled_back(
        self,
        batch_id: str,
        rows: Sequence[tuple[int, FileStatus, str, Mapping[str, Any]]],
    ) -> set[int]:
        """Mark rows `rolled_back` and append their 'rollback' events, in one transaction.

        Each entry is (row id, the status the caller saw, outcome, detail). A row is changed
        only if it still has that status, so a runner that claimed it meanwhile wins; the ids
        actually changed are returned, and only they get an event.
        """
        changed: set[int] = set()
        if not rows:
            return changed
        with translate_db_errors(f"rolling back rows of {batch_id}"), self.conn.transaction():
            with self.conn.cursor() as cur:
                for row_id, seen, _, _ in rows:
                    cur.execute(
                        self._q(
                            "UPDATE {s}.files SET status = 'rolled_back', lease_owner = NULL,"
                            " lease_expires_at = NULL, next_attempt_at = NULL, updated_at = now()"
                            " WHERE id = %s AND batch_id = %s AND status = %s"
                        ),
                        (row_id, batch_id, seen.value),
                    )
                    if cur.rowcount == 1:
                        changed.add(row_id)
            self._insert_events(
                batch_id,
                "rollback",
                [
                    (row_id, outcome, detail)
                    for row_id, _, outcome, detail in rows
                    if row_id in changed
                ],
            )
            self._refresh_counts(batch_id)
        return changed

    def finish_rollback(self, batch_id: str) -> BatchStatus:
        """Mark the batch `rolled_back` once every row is; returns the batch's status."""
        with translate_db_errors(f"finishing the rollback of {batch_id}"), self.conn.transaction():
            row = self.conn.execute(
                self._q(
                    "SELECT b.status, (SELECT count(*) FROM {s}.files f"
                    "  WHERE f.batch_id = b.batch_id AND f.status <> 'rolled_back') AS open"
                    " FROM {s}.batches b WHERE b.batch_id = %s"
                ),
                (batch_id,),
            ).fetchone()
            if row is None:
                raise BatchNotFound(f"No batch {batch_id!r} in schema {self.schema!r}.")
            status = BatchStatus(row["status"])
            if int(row["open"]) > 0 or status is BatchStatus.ROLLED_BACK:
                return status
            self.conn.execute(
                self._q(
                    "UPDATE {s}.batches SET status = 'rolled_back', completed_at = now()"
                    " WHERE batch_id = %s"
                ),
                (batch_id,),
            )
            self.add_event(batch_id, None, "batch", BatchStatus.ROLLED_BACK.value, {})
        return BatchStatus.ROLLED_BACK
