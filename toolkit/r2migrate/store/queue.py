"""What workers need of the database: lease owners and their liveness, and the job queue's rows.

Must not create, start or retry jobs (the worker does that through procrastinate's API) nor
decide what a file's outcome is (ledger.py); here are only the SQL statements on procrastinate's
tables and the lease takeovers that read them, so the store stays the only code speaking SQL.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from r2migrate.errors import DatabaseUnavailable, StateError
from r2migrate.settings.config import Settings
from r2migrate.store.db import (
    Database,
    LedgerStatus,
    privilege_error,
    procrastinate_version,
    same_minor,
    translate_db_errors,
)

log = logging.getLogger(__name__)


def new_owner_id(worker_id: int | None = None) -> str:
    """A lease owner id naming this host and process, so a dead local owner can be recognised,
    and (``worker_id``) the procrastinate worker whose heartbeat vouches for it on any host."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return owner if worker_id is None else f"{owner}:w{worker_id}"


# Leases of an owner naming a procrastinate worker (":w<id>") whose heartbeat is older than the
# stalled-worker limit, or whose row is gone (pruned as stalled): the worker is dead, whatever
# host it ran on, and its files are settled by HEAD by whoever claims them next.
_DEAD_WORKER_LEASE = (
    "status = 'uploading' AND lease_expires_at > now() AND lease_owner ~ ':w[0-9]+$'"
    " AND NOT EXISTS (SELECT 1 FROM {s}.procrastinate_workers w"
    "  WHERE w.id = substring(lease_owner from ':w([0-9]+)$')::bigint"
    "  AND w.last_heartbeat >= now() - make_interval(secs => %s))"
)


def _owner_is_dead_here(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie still answers kill(0) until it is reaped, but it will never finish an upload.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


@contextmanager
def translate_queue_errors(doing: str, settings: Settings | None = None) -> Iterator[None]:
    """The one place procrastinate's connection errors become the toolkit's; a missing
    privilege is PrivilegeMissing (exit 4) with the GRANT for the role in ``settings``."""
    import psycopg_pool  # only those who run the queue need these: keeps `batches` quick
    from procrastinate import exceptions as pexc

    try:
        yield
    except (pexc.ConnectorException, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, psycopg.errors.InsufficientPrivilege):
            schema, role = "<state_schema>", "<role>"
            if settings is not None and settings.database_url:
                schema = settings.state_schema
                role = str(conninfo_to_dict(settings.database_url).get("user") or role)
            raise privilege_error(cause, doing, schema=schema, role=role) from exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DatabaseUnavailable(f"PostgreSQL failed while {doing}: {first}") from exc


@dataclass(frozen=True)
class QueueStatus:
    """The job queue as `doctor` reports it (read only)."""

    procrastinate_version: str  # the one that made the tables
    jobs: dict[str, int]  # batch jobs by status
    stalled: int  # running jobs whose worker sent no heartbeat for stalled_worker_s
    workers_alive: int
    dead_leases: dict[str, int] = field(default_factory=dict)  # files held by dead workers

    @property
    def files_held_by_dead(self) -> int:
        return sum(self.dead_leases.values())


@dataclass(frozen=True)
class StalledJob:
    job_id: int
    batch_id: str  # the job's lock


class Queue(Database):
    """The queue part of ``State`` (ledger.py), over the same connection."""

    # -- leases of dead owners ------------------------------------------------------------------

    def _has_worker_table(self) -> bool:
        return self._regclass("procrastinate_workers")

    def release_dead_worker_leases(
        self, stalled_worker_s: float, *, batch_id: str | None = None
    ) -> int:
        """Expire the leases of workers declared dead (no heartbeat for ``stalled_worker_s``),
        on any host; returns how many. Nothing to do before the job queue was ever installed."""
        where = _DEAD_WORKER_LEASE + (" AND batch_id = %s" if batch_id is not None else "")
        params: list[Any] = [stalled_worker_s] + ([batch_id] if batch_id is not None else [])
        with translate_db_errors("releasing the leases of dead workers"):
            if not self._has_worker_table():
                return 0
            cur = self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET lease_expires_at = now() - interval '1 second'"
                    " WHERE " + where
                ),
                params,
            )
        if cur.rowcount:
            log.warning("released %d file lease(s) of dead worker(s)", cur.rowcount)
        return cur.rowcount

    def dead_worker_leases(self, stalled_worker_s: float) -> dict[str, int]:
        """Files still leased by workers declared dead, per batch (for `watch` and `doctor`)."""
        with translate_db_errors("counting the leases of dead workers"):
            if not self._has_worker_table():
                return {}
            rows = self.conn.execute(
                self._q(
                    "SELECT batch_id, count(*) AS n FROM {s}.files WHERE "
                    + _DEAD_WORKER_LEASE
                    + " GROUP BY batch_id ORDER BY batch_id"
                ),
                (stalled_worker_s,),
            ).fetchall()
        return {r["batch_id"]: int(r["n"]) for r in rows}

    def release_dead_leases(self, batch_id: str, *, stalled_worker_s: float | None = None) -> int:
        """Expire leases held by processes on this host that no longer exist (kill -9), and,
        with ``stalled_worker_s``, those of workers on any host whose heartbeat stopped."""
        released = 0
        if stalled_worker_s is not None:
            released = self.release_dead_worker_leases(stalled_worker_s, batch_id=batch_id)
        return released + self._release_dead_local_leases(batch_id)

    def _release_dead_local_leases(self, batch_id: str) -> int:
        with translate_db_errors("checking leases"):
            rows = self.conn.execute(
                self._q(
                    "SELECT DISTINCT lease_owner FROM {s}.files WHERE batch_id = %s"
                    " AND status = 'uploading' AND lease_expires_at > now()"
                ),
                (batch_id,),
            ).fetchall()
            dead = [r["lease_owner"] for r in rows if r["lease_owner"]]
            dead = [o for o in dead if _owner_is_dead_here(o)]
            if not dead:
                return 0
            cur = self.conn.execute(
                self._q(
                    "UPDATE {s}.files SET lease_expires_at = now() - interval '1 second'"
                    " WHERE batch_id = %s AND status = 'uploading' AND lease_owner = ANY(%s)"
                ),
                (batch_id, dead),
            )
            log.info("took over %d file(s) from dead local runner(s) %s", cur.rowcount, dead)
            return cur.rowcount

    # -- the job queue (procrastinate's tables) -------------------------------------------------

    def require_queue(self) -> LedgerStatus:
        """The queue's tables as this procrastinate needs them; reads only, never creates.

        They are made with the ledger (`r2migrate db upgrade`, the first `plan`, or `db sql`);
        the procrastinate version that made them is kept in ``queue_schema``, and another minor
        version is refused with a clear message instead of running against tables it does not
        know.
        """
        status = self.require_ledger()
        installed = procrastinate_version()
        made_by = status.queue_version or "?"
        if not same_minor(made_by, installed):
            raise StateError(
                f"The job queue in schema {self.schema!r} was made by procrastinate "
                f"{made_by}; this r2migrate runs procrastinate {installed}.",
                hint="Run workers from the r2migrate that made it. To start the queue "
                "afresh, stop every worker, then drop procrastinate's tables, types and "
                f"functions in schema {self.schema} and {self.schema}.queue_schema.",
            )
        return status

    @contextmanager
    def queue_lock(self) -> Iterator[None]:
        """Serialize "look at the queue, then change it" between workers, machines and the API,
        so a batch never gets a second job while its first runs, and a stalled job is retried
        once."""
        with self.session_lock(f"r2migrate-queue:{self.schema}", doing="the job queue"):
            yield

    def queued_batch_ids(self, task_name: str) -> set[str]:
        """Batch ids (the jobs' lock) that have a job of ``task_name`` waiting or running."""
        with translate_db_errors("reading the job queue"):
            rows = self.conn.execute(
                self._q(
                    "SELECT DISTINCT lock FROM {s}.procrastinate_jobs"
                    " WHERE task_name = %s AND status IN ('todo', 'doing')"
                ),
                (task_name,),
            ).fetchall()
        return {r["lock"] for r in rows if r["lock"]}

    def job_counts(self, task_name: str) -> dict[str, int]:
        """Jobs of ``task_name`` by status (todo, doing, succeeded, failed, ...)."""
        with translate_db_errors("reading the job queue"):
            rows = self.conn.execute(
                self._q(
                    "SELECT status::text AS status, count(*) AS n FROM {s}.procrastinate_jobs"
                    " WHERE task_name = %s GROUP BY status"
                ),
                (task_name,),
            ).fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def stalled_jobs(self, task_name: str, stalled_worker_s: float) -> list[StalledJob]:
        """Running jobs of ``task_name`` whose worker sent no heartbeat for ``stalled_worker_s``
        (or whose worker row is gone)."""
        with translate_db_errors("looking for stalled batch jobs"):
            rows = self.conn.execute(
                self._q(
                    "SELECT j.id, j.lock FROM {s}.procrastinate_jobs j"
                    " LEFT JOIN {s}.procrastinate_workers w ON w.id = j.worker_id"
                    " WHERE j.task_name = %s AND j.status = 'doing' AND (w.id IS NULL"
                    "  OR w.last_heartbeat < now() - make_interval(secs => %s))"
                ),
                (task_name, stalled_worker_s),
            ).fetchall()
        return [StalledJob(int(r["id"]), r["lock"]) for r in rows]

    def queue_status(self, task_name: str, stalled_worker_s: float) -> QueueStatus | None:
        """The queue as `doctor` shows it; None when no worker has made the queue yet. Reads
        only."""
        with translate_db_errors("reading the job queue"):
            if not self._regclass("queue_schema"):
                return None
            row = self.conn.execute(
                self._q("SELECT procrastinate_version AS v FROM {s}.queue_schema")
            ).fetchone()
            heartbeats = self.conn.execute(
                self._q(
                    "SELECT count(*) FILTER (WHERE w.id IS NULL OR w.last_heartbeat <"
                    "  now() - make_interval(secs => %s)) AS stalled"
                    " FROM {s}.procrastinate_jobs j"
                    " LEFT JOIN {s}.procrastinate_workers w ON w.id = j.worker_id"
                    " WHERE j.task_name = %s AND j.status = 'doing'"
                ),
                (stalled_worker_s, task_name),
            ).fetchone()
            alive = self.conn.execute(
                self._q(
                    "SELECT count(*) AS n FROM {s}.procrastinate_workers"
                    " WHERE last_heartbeat >= now() - make_interval(secs => %s)"
                ),
                (stalled_worker_s,),
            ).fetchone()
        return QueueStatus(
            procrastinate_version=row["v"] if row else "?",
            jobs=self.job_counts(task_name),
            stalled=int(heartbeats["stalled"]) if heartbeats else 0,
            workers_alive=int(alive["n"]) if alive else 0,
            dead_leases=self.dead_worker_leases(stalled_worker_s),
        )
