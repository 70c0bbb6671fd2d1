"""The toolkit's own tables: migrations, inventory snapshots, batches, per-file ledger, events.

Must not touch source files or the bucket; it is the only module that speaks SQL to schema
``state_schema`` and the one place psycopg exceptions are translated into the error tree.

The ledger (the numbered migrations, then procrastinate's objects for the job queue) is made
or upgraded only by ``State.migrate``; every other path reads its version with SELECTs
(``ledger_status`` / ``require_ledger``) and never issues DDL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources
from importlib.metadata import version as _package_version
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from r2migrate.errors import (
    BatchNotFound,
    ConfigError,
    DatabaseUnavailable,
    PrivilegeMissing,
    SchemaNotReady,
    SchemaTooNew,
    StateError,
)
from r2migrate.rules.binding import SourceSpec, Target

log = logging.getLogger(__name__)

Connection = psycopg.Connection[dict[str, Any]]


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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


def _migration_files() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("r2migrate.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = max(v for v, _, _ in _migration_files())


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
def translate_db_errors(what: str, *, ddl: bool = False) -> Iterator[None]:
    """Turn psycopg errors into the toolkit's tree; the only place that knows psycopg's.

    ``ddl``: the statements create or alter objects, so a refusal is about CREATE or ownership.
    """
    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL failed while {what}: {_first_line(exc)}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise privilege_error(exc, what, ddl=ddl) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise ConfigError(
            f"A table does not exist while {what}: {_first_line(exc)}",
            hint="Check `references` (table.column) in your settings and DATABASE_URL.",
        ) from exc
    except psycopg.errors.UndefinedColumn as exc:
        raise ConfigError(
            f"A column does not exist while {what}: {_first_line(exc)}",
            hint="Check `references` and `reference_id_column` in your settings.",
        ) from exc
    except psycopg.Error as exc:
        raise StateError(f"PostgreSQL error while {what}: {_first_line(exc)}") from exc


# "permission denied for table batches" / "must be owner of table files" (PostgreSQL < 11 says
# "relation"); a server with lc_messages in another language falls back to the generic hint.
_DENIED = re.compile(r"permission denied for (\w+) (\S+)")
_NOT_OWNER = re.compile(r"must be owner of (\w+) (\S+)")
_ROLE = "<role>"  # filled in by State.__exit__, which knows the connection's user
_SCHEMA = "<state_schema>"


def privilege_error(
    exc: psycopg.Error, what: str, *, ddl: bool = False, schema: str = _SCHEMA, role: str = _ROLE
) -> PrivilegeMissing:
    """A refusal for lack of a privilege, with the privilege and the GRANT that would fix it."""
    text = (exc.diag.message_primary or _first_line(exc)).strip()
    err = PrivilegeMissing(f"PostgreSQL refused {what}: {text}", denied=text, ddl=ddl)
    return complete_privilege_error(err, schema=schema, role=role)


def complete_privilege_error(
    err: PrivilegeMissing, *, schema: str = _SCHEMA, role: str = _ROLE
) -> PrivilegeMissing:
    """(Re)write the hint of ``err`` once the schema and the role are known."""
    text, ddl = err.denied, err.ddl
    s = _quote_ident(schema) if schema != _SCHEMA else schema
    r = _quote_ident(role) if role != _ROLE else role
    hint = ""
    if m := _NOT_OWNER.match(text):
        hint = (
            f"Only the owner of {m[1]} {m[2]} may change it: run `r2migrate db upgrade` as the "
            "role that created the ledger, or have a DBA run the SQL of `r2migrate db sql`."
        )
    elif m := _DENIED.match(text):
        kind, name = m[1], m[2]
        ours = name in ledger_tables()[0] or name.startswith("procrastinate_")
        if kind in ("table", "relation", "view") and not ours:  # the application's table
            privilege = "SELECT (and UPDATE with write_back)"
            grant = f"GRANT SELECT ON {_quote_ident(name)} TO {r};"
        elif kind in ("table", "relation", "view"):
            privilege = "SELECT, INSERT, UPDATE and DELETE"
            grant = f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r};"
        elif kind == "sequence":
            privilege = "USAGE"
            grant = f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r};"
        elif kind in ("function", "procedure"):
            privilege = "EXECUTE"
            grant = f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r};"
        elif kind == "schema" and ddl:
            privilege = "CREATE"
            grant = f"GRANT CREATE ON SCHEMA {_quote_ident(name)} TO {r};"
        elif kind == "schema":
            privilege = "USAGE"
            grant = f"GRANT USAGE ON SCHEMA {_quote_ident(name)} TO {r};"
        elif kind == "database":
            privilege = "CREATE"
            grant = f"GRANT CREATE ON DATABASE {_quote_ident(name)} TO {r};"
        else:
            privilege, grant = "", ""
        if grant:
            hint = f"Role {r} needs {privilege} on {kind} {name}; a DBA can grant it: {grant}"
            if ddl:
                hint += " Or have a DBA create the ledger with the SQL of `r2migrate db sql`."
            else:
                hint += f" (`r2migrate db grants {r}` prints every GRANT the run needs.)"
    err.hint = hint or PrivilegeMissing.default_hint
    return err


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def connect(database_url: str | None, *, connect_timeout_s: float = 10.0) -> Connection:
    """Open an autocommit connection; the password never reaches an error message."""
    if not database_url:
        raise ConfigError(
            "No database configured.",
            hint="Set DATABASE_URL (or database_url in r2migrate.toml), "
            "or start the embedded stack with `r2migrate dev up`.",
        )
    try:
        return psycopg.connect(
            database_url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=max(1, int(connect_timeout_s)),
            application_name="r2migrate",
        )
    except psycopg.OperationalError as exc:
        # psycopg's message names host and port but not the password; keep only its first line.
        raise DatabaseUnavailable(f"Cannot connect to PostgreSQL: {_first_line(exc)}") from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"database_url is not a valid connection string: {_first_line(exc)}"
        ) from exc


class LedgerState(StrEnum):
    """How the ledger in ``state_schema`` compares with this r2migrate."""

    MISSING = "missing"  # no schema_migrations table (the schema itself may exist, empty)
    OLDER = "older"  # a numbered migration, or the job queue, still to apply
    CURRENT = "current"
    NEWER = "newer"  # migrated by a newer r2migrate: refused


@dataclass(frozen=True)
class LedgerStatus:
    """What plain SELECTs tell about the ledger; never creates anything."""

    schema: str
    schema_exists: bool
    version: int  # 0 when there is no schema_migrations table
    queue_version: str | None  # the procrastinate that made the queue tables; None: none yet

    @property
    def state(self) -> LedgerState:
        if self.version > SCHEMA_VERSION:
            return LedgerState.NEWER
        if self.version == 0:
            return LedgerState.MISSING
        if self.version < SCHEMA_VERSION or self.queue_version is None:
            return LedgerState.OLDER
        return LedgerState.CURRENT


def procrastinate_version() -> str:
    return _package_version("procrastinate")


def same_minor(a: str, b: str) -> bool:
    return a.split(".")[:2] == b.split(".")[:2]


def ledger_sql(schema: str = "r2migrate") -> str:
    """The whole ledger as SQL for a DBA: schema, every numbered migration with its
    ``schema_migrations`` row, and procrastinate's objects with their ``queue_schema`` row, in
    one transaction; what `r2migrate db upgrade` would do to an empty database."""
    s = '"' + schema.replace('"', '""') + '"'
    lit = "'" + schema.replace("'", "''") + "'"
    parts = [
        f"-- r2migrate ledger for schema {s}: {SCHEMA_VERSION} migration(s) and the job queue",
        f"-- (procrastinate {procrastinate_version()}). Run once, e.g. psql -v ON_ERROR_STOP=1",
        "BEGIN;",
        f"SELECT pg_advisory_xact_lock(hashtext('r2migrate:' || {lit}));",
        f"CREATE SCHEMA IF NOT EXISTS {s};",
        _SCHEMA_MIGRATIONS.replace("{schema}", s) + ";",
    ]
    for number, name, text in _migration_files():
        parts.append(f"-- {name}")
        parts.append(text.replace("{schema}", s).rstrip())
        parts.append(
            f"INSERT INTO {s}.schema_migrations (version, name) VALUES ({number}, '{name}');"
        )
    parts.append(f"-- procrastinate {procrastinate_version()}: its file names no schema")
    parts.append(_QUEUE_SCHEMA.replace("{schema}", s) + ";")
    parts.append(f"SET LOCAL search_path TO {s};")
    from procrastinate.schema import SchemaManager  # only to create the queue: keeps startup fast

    parts.append(SchemaManager.get_schema().rstrip())
    parts.append(
        f"INSERT INTO {s}.queue_schema (procrastinate_version) "
        f"VALUES ('{procrastinate_version()}');"
    )
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


def ledger_tables() -> tuple[frozenset[str], frozenset[str]]:
    """The ledger's tables (every numbered migration's, beside procrastinate's
    ``procrastinate_*``), and those of them the commands only read."""
    select_only = frozenset({"schema_migrations", "queue_schema"})
    made = {
        m[1]
        for _, _, text in _migration_files()
        for m in re.finditer(r"CREATE TABLE (?:IF NOT EXISTS )?\{schema\}\.(\w+)", text)
    }
    return frozenset(made) | select_only, select_only


def grants_sql(schema: str, role: str) -> str:
    """The GRANTs a least-privilege role needs to run everything but the ledger's creation:
    USAGE on the schema, row access on every table, sequences, procrastinate's functions."""
    s = '"' + schema.replace('"', '""') + '"'
    r = _quote_ident(role)
    return (
        "\n".join(
            [
                f"GRANT USAGE ON SCHEMA {s} TO {r};",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r};",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r};",
                f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r};",
            ]
        )
        + "\n"
    )


_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)
_QUEUE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {schema}.queue_schema ("
    " procrastinate_version text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)


class State:
    """A handle on the toolkit's schema over one connection (not shared between threads)."""

    def __init__(self, conn: Connection, schema: str = "r2migrate") -> None:
        self.conn = conn
        self.schema = schema
        self._s = sql.Identifier(schema)

    @classmethod
    def open(
        cls,
        database_url: str | None,
        *,
        schema: str = "r2migrate",
        migrate: bool = True,
        require_ledger: bool = False,
    ) -> State:
        """Connect and look at the ledger.

        ``migrate``: create or upgrade the ledger when it is missing or older (the one step that
        needs CREATE; a current ledger costs only SELECTs). Otherwise nothing is ever created:
        with ``require_ledger`` a missing or older ledger raises ``SchemaNotReady`` (what every
        command but `plan` wants), without it only a newer one is refused (dry runs).
        """
        state = cls(connect(database_url), schema)
        try:
            if migrate:
                state.migrate()
            elif require_ledger:
                state.require_ledger()
            else:
                state.check_version()
        except BaseException as exc:
            state._complete(exc)
            state.close()
            raise
        return state

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._complete(exc)
        self.close()

    def _complete(self, exc: BaseException) -> None:
        """Name this schema and this role in a privilege error's GRANT."""
        if isinstance(exc, PrivilegeMissing) and not self.conn.closed:
            complete_privilege_error(exc, schema=self.schema, role=self.conn.info.user)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    # -- schema ---------------------------------------------------------------------------------

    def _regclass(self, table: str) -> bool:
        row = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{self._s.as_string(self.conn)}.{table}",),
        ).fetchone()
        return bool(row and row["present"])

    def schema_version(self) -> int:
        with translate_db_errors("reading the schema version"):
            if not self._regclass("schema_migrations"):
                return 0
            got = self.conn.execute(
                self._q("SELECT coalesce(max(version), 0) AS v FROM {s}.schema_migrations")
            ).fetchone()
            return int(got["v"]) if got else 0

    def ledger_status(self) -> LedgerStatus:
        """Schema, ledger version and job queue, with plain SELECTs only."""
        with translate_db_errors("reading the schema version"):
            row = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s) AS e",
                (self.schema,),
            ).fetchone()
            exists = bool(row and row["e"])
            queue = None
            if exists and self._regclass("queue_schema"):
                got = self.conn.execute(
                    self._q("SELECT max(procrastinate_version) AS v FROM {s}.queue_schema")
                ).fetchone()
                queue = got["v"] if got else None
        version = self.schema_version() if exists else 0
        return LedgerStatus(self.schema, exists, version, queue)

    def check_version(self) -> int:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"Schema {self.schema!r} is at version {version}, "
                f"but this r2migrate knows only up to {SCHEMA_VERSION}."
            )
        return version

    def require_ledger(self) -> LedgerStatus:
        """The ledger as this r2migrate needs it, or ``SchemaNotReady`` naming the schema and
        the command that creates it. Reads only."""
        status = self.ledger_status()
        if status.state is LedgerState.NEWER:
            self.check_version()
        if status.state is LedgerState.MISSING:
            where = "" if status.schema_exists else " (the schema does not exist)"
            raise SchemaNotReady(
                f"No r2migrate ledger in schema {self.schema!r}{where}: this command reads it "
                "and creates nothing. Check state_schema for a typo, or create the ledger first."
            )
        if status.state is LedgerState.OLDER:
            missing = (
                "the job queue"
                if status.version >= SCHEMA_VERSION
                else f"version {status.version} of {SCHEMA_VERSION}"
            )
            raise SchemaNotReady(
                f"The r2migrate ledger in schema {self.schema!r} is older than this r2migrate "
                f"({missing}): this command creates nothing."
            )
        return status

    def migrate(self) -> int:
        """Create or upgrade the ledger and its job queue; returns the version.

        Idempotent. A current ledger is seen with SELECTs alone, so a role without CREATE can
        call this on a ledger a DBA made. Otherwise the numbered SQL files and procrastinate's
        schema are applied in one transaction under an advisory lock (the one step that needs
        CREATE on the database, or on the schema when it exists).
        """
        status = self.ledger_status()
        if status.state is LedgerState.CURRENT:
            return status.version
        if status.state is LedgerState.NEWER:
            return self.check_version()
        with (
            translate_db_errors("creating the r2migrate ledger", ddl=True),
            self.conn.transaction(),
        ):
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"r2migrate:{self.schema}",)
            )
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
            # exists (PostgreSQL checks the privilege first): only ask for what is missing.
            if not self.ledger_status().schema_exists:
                self.conn.execute(self._q("CREATE SCHEMA {s}"))
            if not self._regclass("schema_migrations"):
                self.conn.execute(self._q(_SCHEMA_MIGRATIONS.replace("{schema}", "{s}")))
            version = self.check_version()
            schema_sql = self._s.as_string(self.conn)
            for number, name, text in _migration_files():
                if number <= version:
                    continue
                log.info("applying state migration %s", name)
                self.conn.execute(text.replace("{schema}", schema_sql).encode())
                self.conn.execute(
                    self._q("INSERT INTO {s}.schema_migrations (version, name) VALUES (%s, %s)"),
                    (number, name),
                )
                version = number
            if not self._regclass("queue_schema") or self.ledger_status().queue_version is None:
                self._install_queue()
            return version

    def _install_queue(self) -> None:
        """procrastinate's tables, types and functions beside the ledger, its version kept."""
        installed = procrastinate_version()
        log.info("installing procrastinate %s's tables in schema %s", installed, self.schema)
        self.conn.execute(self._q(_QUEUE_SCHEMA.replace("{schema}", "{s}")))
        self.conn.execute(self._q("SET LOCAL search_path TO {s}"))  # its file names no schema
        from procrastinate.schema import SchemaManager

        self.conn.execute(SchemaManager.get_schema().encode())
        self.conn.execute(
            self._q("INSERT INTO {s}.queue_schema (procrastinate_version) VALUES (%s)"),
            (installed,),
        )

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
            for r in cur:
                yield MediaFile(
                    file_id=r["file_id"],
                    source_ref=r["source_ref"],
                    source_id=r["source_id"],
                    relative_path=r["relative_path"],
                    object_key=r["object_key"],
                    size_bytes=r["size_bytes"],
                    mtime_ns=r["mtime_ns"],
                    content_type=r["content_type"],
                    content_encoding=r["content_encoding"],
                    problems=tuple(r["problems"]),
                    disk_path=r["disk_path"],
                )

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
        with translate_db_errors("naming a batch"):
            row = self.conn.execute(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD-HH24MISS') AS t"
            ).fetchone()
        assert row is not None
        return f"b{row['t']}-{uuid.uuid4().hex[:6]}"

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
        with translate_db_errors(f"creating batch {batch_id}"), self.conn.transaction():
            self.conn.execute(
                self._q(
                    "INSERT INTO {s}.batches"
                    " (batch_id, batch_size, bucket_name, location, endpoint_url, source_kind,"
                    "  media_root, media_url, settings)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ),
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
                ),
            )
            with self.conn.cursor() as cur:
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.files (batch_id, target_id, file_id, source_refs,"
                        " relative_path, object_key, size_bytes, mtime_ns, content_type,"
                        " content_encoding, status, source_sha256, error_code, error_message)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    ),
                    [
                        (
                            batch_id,
                            target.target_id,
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
                        for f in files
                    ],
                )
            self.add_event(batch_id, None, "batch", "planned", {"files": len(files)})
            self._refresh_counts(batch_id)
        return self.get_batch(batch_id)

    def get_batch(self, batch_id: str) -> Batch:
        with translate_db_errors(f"reading batch {batch_id}"):
            row = self.conn.execute(
                self._q("SELECT " + _BATCH_COLUMNS + " FROM {s}.batches WHERE batch_id = %s"),
                (batch_id,),
            ).fetchone()
        if row is None:
            raise BatchNotFound(f"No batch {batch_id!r} in schema {self.schema!r}.")
        return _batch_from_row(row)

    def list_batches(self) -> list[Batch]:
        with translate_db_errors("listing batches"):
            rows = self.conn.execute(
                self._q(
                    "SELECT " + _BATCH_COLUMNS + " FROM {s}.batches ORDER BY created_at, batch_id"
                )
            ).fetchall()
        return [_batch_from_row(r) for r in rows]

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
        return [_file_from_row(r) for r in rows]

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
        return [_file_from_row(r) for r in rows]

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

    def _has_worker_table(self) -> bool:
        row = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{sql.Identifier(self.schema).as_string(self.conn)}.procrastinate_workers",),
        ).fetchone()
        return bool(row and row["present"])

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
        with translate_db_errors(f"claiming files of {batch_id}"), self.conn.transaction():
            rows = self.conn.execute(
                self._q(
                    "WITH picked AS ("
                    "  SELECT id, status AS previous FROM {s}.files"
                    "  WHERE batch_id = %s AND (" + wanted + ")"
                    "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " UPDATE {s}.files f SET status = 'uploading', lease_owner = %s,"
                    "  lease_expires_at = now() + make_interval(secs => %s), updated_at = now()"
                    " FROM picked WHERE f.id = picked.id"
                    " RETURNING " + _CLAIM_COLUMNS + ", picked.previous"
                ),
                (batch_id, limit, owner, lease_s),
            ).fetchall()
            if rows:
                # The intent in the history too, before any byte is sent: a PUT that lands just
                # before a kill -9 still shows as an attempt, not only as a later "resolve".
                self.conn.execute(
                    self._q(
                        "INSERT INTO {s}.events (batch_id, file_row_id, kind, outcome, detail)"
                        " SELECT %s, v.id, 'attempt', 'sending',"
                        "   jsonb_build_object('owner', %s::text, 'previous', v.previous)"
                        " FROM unnest(%s::bigint[], %s::text[]) AS v(id, previous)"
                    ),
                    (batch_id, owner, [r["id"] for r in rows], [r["previous"] for r in rows]),
                )
        return [_file_from_row(r) for r in sorted(rows, key=lambda r: r["id"])]

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
        """Write a group of outcomes in one transaction and two statements.

        The arrays go in binary (``%b``): psycopg builds text arrays in Python, escaping every
        quoted ETag, which cost about three times the client CPU per row.

        Only rows this owner still holds are updated: if another runner took a lease over, its
        result wins and ours stays history (events).
        """
        if not outcomes:
            return 0
        columns = list(
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
        events = [
            (batch_id, o.row_id, kind, outcome, json.dumps(dict(detail), default=str))
            for o in outcomes
            for kind, outcome, detail in o.events
        ]
        with translate_db_errors(f"recording outcomes for {batch_id}"), self.conn.transaction():
            updated = self.conn.execute(
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
            ).fetchall()
            if len(updated) != len(outcomes):
                lost = {o.row_id for o in outcomes} - {r["id"] for r in updated}
                log.warning("rows %s are no longer leased by this runner", sorted(lost))
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
        return len(updated)

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

    def finish_rollback(self, batch_id: str) -> BatchStatus:
        """Mark the batch `rolled_back` once every row is; returns the batch's status."""
        with translate_db_errors(f"finishing the rollback of {batch_id}"), self.conn.transaction():
            row = self.conn.execute(
                self._q(
                    "SELECT count(*) FILTER (WHERE status <> 'rolled_back') AS open"
                    " FROM {s}.files WHERE batch_id = %s"
                ),
                (batch_id,),
            ).fetchone()
            batch = self.get_batch(batch_id)
            if row is None or int(row["open"]) > 0 or batch.status is BatchStatus.ROLLED_BACK:
                return batch.status
            self.conn.execute(
                self._q(
                    "UPDATE {s}.batches SET status = 'rolled_back', completed_at = now()"
                    " WHERE batch_id = %s"
                ),
                (batch_id,),
            )
            self.add_event(batch_id, None, "batch", BatchStatus.ROLLED_BACK.value, {})
        return BatchStatus.ROLLED_BACK

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


# What a runner needs of a claimed row: the timestamps stay in the database, unparsed.
_CLAIM_COLUMNS = ", ".join(
    "f." + c
    for c in (
        "id",
        "batch_id",
        "file_id",
        "relative_path",
        "object_key",
        "size_bytes",
        "mtime_ns",
        "content_type",
        "content_encoding",
        "status",
        "attempts",
        "source_sha256",
        "object_sha256",
        "etag",
        "part_size_bytes",
        "error_code",
        "error_message",
        "lease_owner",
        "source_refs",
    )
)

# Every batches column but the (JSON) settings, which only a report needs: reading the batch
# after each group of outcomes should not parse it.
_BATCH_COLUMNS = (
    "batch_id, status, dry_run, batch_size, total_files, uploaded_files, verified_files,"
    " failed_files, skipped_files, conflict_files, total_bytes, uploaded_bytes, bucket_name,"
    " location, created_at, started_at, completed_at, last_error, endpoint_url, source_kind,"
    " media_root, media_url"
)


def _batch_from_row(r: Mapping[str, Any]) -> Batch:
    return Batch(
        batch_id=r["batch_id"],
        status=BatchStatus(r["status"]),
        dry_run=r["dry_run"],
        batch_size=r["batch_size"],
        total_files=r["total_files"],
        uploaded_files=r["uploaded_files"],
        verified_files=r["verified_files"],
        failed_files=r["failed_files"],
        skipped_files=r["skipped_files"],
        conflict_files=r["conflict_files"],
        total_bytes=r["total_bytes"],
        uploaded_bytes=r["uploaded_bytes"],
        bucket_name=r["bucket_name"],
        location=r["location"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        completed_at=r["completed_at"],
        last_error=r["last_error"],
        endpoint_url=r["endpoint_url"],
        source_kind=r["source_kind"],
        media_root=r["media_root"],
        media_url=r["media_url"],
    )


def _file_from_row(r: Mapping[str, Any]) -> FileRecord:
    previous = r.get("previous")
    return FileRecord(
        id=r["id"],
        batch_id=r["batch_id"],
        file_id=r["file_id"],
        relative_path=r["relative_path"],
        object_key=r["object_key"],
        size_bytes=r["size_bytes"],
        mtime_ns=r["mtime_ns"],
        content_type=r["content_type"],
        content_encoding=r["content_encoding"],
        status=FileStatus(r["status"]),
        attempts=r["attempts"],
        source_sha256=r["source_sha256"],
        object_sha256=r["object_sha256"],
        etag=r["etag"],
        part_size_bytes=r["part_size_bytes"],
        error_code=r["error_code"],
        error_message=r["error_message"],
        lease_owner=r["lease_owner"],
        source_refs=tuple(r["source_refs"] or ()),
        previous_status=FileStatus(previous) if previous else None,
        created_at=r.get("created_at"),
        updated_at=r.get("updated_at"),
        uploaded_at=r.get("uploaded_at"),
        verified_at=r.get("verified_at"),
    )
