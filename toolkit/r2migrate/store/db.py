"""The connection to the ledger: connecting, psycopg's errors, the schema's version, upgrade, locks.

Must not read or write batches, files, events or jobs (ledger.py, history.py and queue.py do); it
is the one place psycopg exceptions are translated into the error tree.

The ledger (the numbered migrations, then procrastinate's objects for the job queue) is made
or upgraded only by ``Database.migrate``; every other path reads its version with SELECTs
(``ledger_status`` / ``require_ledger``) and never issues DDL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from importlib.metadata import version as _package_version
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from r2migrate.errors import (
    ConfigError,
    DatabaseUnavailable,
    PrivilegeMissing,
    SchemaNotReady,
    SchemaTooNew,
    StateError,
)

log = logging.getLogger(__name__)

Connection = psycopg.Connection[dict[str, Any]]


def _migration_files() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("r2migrate.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = max(v for v, _, _ in _migration_files())


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
_ROLE = "<role>"  # filled in by Database.__exit__, which knows the connection's user
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


class Database:
    """A handle on the toolkit's schema over one connection (not shared between threads).

    The base of ``State`` (ledger.py): the schema's version and upgrade, and locks.
    """

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
    ) -> Self:
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

    def __enter__(self) -> Self:
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

    # -- locks ----------------------------------------------------------------------------------

    @contextmanager
    def session_lock(self, key: str, *, doing: str) -> Iterator[None]:
        """Hold the advisory lock named ``key`` for the block, across transactions (the schema's
        upgrade takes a transaction-scoped one instead, see ``migrate``)."""
        with translate_db_errors(f"locking {doing}"):
            self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            # A connection lost meanwhile has dropped the lock with the session.
            with suppress(Exception), translate_db_errors(f"unlocking {doing}"):
                self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
