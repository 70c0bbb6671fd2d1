"""Doctor's PostgreSQL checks: the server, the ledger's schema, privileges, job queue, references.

Must not change a table: SELECTs only (the schema is not even created).
"""

from __future__ import annotations

import time
from collections.abc import Generator

from r2migrate.report.doctor_base import _FAIL, _OK, _SKIP, _WARN, _DoctorBase, _Result
from r2migrate.store import catalog
from r2migrate.store.ledger import (
    SCHEMA_VERSION,
    LedgerState,
    LedgerStatus,
    State,
    connect,
    grants_sql,
    ledger_tables,
    procrastinate_version,
    same_minor,
)

POSTGRES_SUPPORTED = (13, 18)  # majors tested; procrastinate needs 13 or later
STATEMENT_TIMEOUT_WARN_MS = 60_000  # below this, long reports may be cut off


class _DatabaseChecks(_DoctorBase):
    def _check_postgres(self) -> _Result:
        s = self._settings()
        started = time.perf_counter()
        self.conn = connect(s.database_url, connect_timeout_s=s.connect_timeout_s)
        elapsed_ms = (time.perf_counter() - started) * 1000
        info = self.conn.info
        detail = (
            f"connected to {info.host}:{info.port}/{info.dbname} as {info.user} in "
            f"{elapsed_ms:.0f} ms; PostgreSQL {_pg_version(info.server_version)}"
        )
        major = info.server_version // 10000
        low, high = POSTGRES_SUPPORTED
        timeouts = self.conn.execute(
            "SELECT current_setting('statement_timeout') AS st,"
            " current_setting('lock_timeout') AS lt,"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout') AS st_ms"
        ).fetchone()
        if timeouts and 0 < int(timeouts["st_ms"]) < STATEMENT_TIMEOUT_WARN_MS:
            return (
                _WARN,
                f"{detail}; statement_timeout is {timeouts['st']} (lock_timeout "
                f"{timeouts['lt']}) for this role",
                "Long reads (report, verify --all over millions of rows) and the wait for the "
                "ledger's lock may be cut off: set it to 0 or minutes for this role, or add "
                "options=-c statement_timeout=0 to DATABASE_URL.",
            )
        if major < low:
            return (
                _WARN,
                f"{detail}, older than the supported {low}–{high}",
                f"procrastinate (the job queue) supports PostgreSQL {low} and later; upgrade "
                "the server, or expect `r2migrate worker` to fail.",
            )
        if major > high:
            return (
                _WARN,
                f"{detail}, newer than the tested {low}–{high}",
                "It will probably work; please report what you find.",
            )
        return (_OK, f"{detail} (supported {low}–{high})", "")

    def _ledger(self) -> LedgerStatus:
        assert self.conn is not None
        # SELECTs only; a PrivilegeMissing (no USAGE, say) gets this role's GRANT in _record
        return State(self.conn, self._settings().state_schema).ledger_status()

    def _can(self, query: str, *args: object) -> bool:
        assert self.conn is not None
        row = self.conn.execute(f"SELECT {query} AS ok", args).fetchone()
        return bool(row and row["ok"])

    def _check_schema(self) -> _Result:
        """Does the ledger exist, at which version, and can this role create or upgrade it?"""
        assert self.conn is not None
        status = self._ledger()
        schema, user = status.schema, self.conn.info.user
        creates = "`r2migrate db upgrade` (or the first `r2migrate plan`) creates it"
        dba = (
            f"Or have a DBA run `r2migrate db sql | psql -v ON_ERROR_STOP=1`, then the GRANTs "
            f"of `r2migrate db grants {user}`."
        )
        if status.state is LedgerState.NEWER:
            return (
                _FAIL,
                f"schema {schema!r} is at version {status.version}, newer than this r2migrate "
                f"({SCHEMA_VERSION})",
                "Upgrade r2migrate to the version that migrated this database.",
            )
        if status.state is LedgerState.CURRENT:
            return (
                _OK,
                f"ledger in schema {schema!r} at version {status.version} (current), job queue "
                f"of procrastinate {status.queue_version}",
                "",
            )
        readers = "until then every other command refuses (exit 4)"
        if not status.schema_exists:
            db = self.conn.info.dbname
            if self._can("has_database_privilege(current_database(), 'CREATE')"):
                return (
                    _WARN,
                    f"schema {schema!r} does not exist yet: {creates}; {readers}",
                    "Check state_schema for a typo if you expected an existing ledger.",
                )
            return (
                _FAIL,
                f"schema {schema!r} does not exist, and role {user} may not create it (no "
                f"CREATE on database {db})",
                f"A DBA can grant it: GRANT CREATE ON DATABASE {db} TO {user}; " + dba,
            )
        may_create = self._can("has_schema_privilege(%s, 'CREATE')", schema)
        if status.state is LedgerState.MISSING:
            if may_create:
                return (
                    _WARN,
                    f"schema {schema!r} exists but holds no ledger yet: {creates}; {readers}",
                    "",
                )
            return (
                _FAIL,
                f"schema {schema!r} exists but holds no ledger, and role {user} may not create "
                "tables in it (no CREATE on the schema)",
                f"A DBA can grant it: GRANT CREATE ON SCHEMA {schema} TO {user}; " + dba,
            )
        what = (
            f"version {status.version} of {SCHEMA_VERSION}"
            if status.version < SCHEMA_VERSION
            else "no job queue"
        )
        owns_all = self._can(
            "NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
            " AND NOT pg_has_role(c.relowner, 'USAGE'))",
            schema,
        )
        if may_create and owns_all:
            return (
                _WARN,
                f"ledger in schema {schema!r} is older than this r2migrate ({what}): "
                f"`r2migrate db upgrade` (or the next plan) upgrades it; {readers}",
                "",
            )
        return (
            _FAIL,
            f"ledger in schema {schema!r} is older than this r2migrate ({what}), and role {user} "
            "may not upgrade it (it needs CREATE on the schema and to own its tables)",
            "Run `r2migrate db upgrade` as the role that owns the ledger. " + dba,
        )

    def _check_privileges(self) -> _Result:
        """What every command after the ledger's creation needs, table by table."""
        assert self.conn is not None
        status = self._ledger()
        schema, user = status.schema, self.conn.info.user
        if not status.schema_exists:
            return (_SKIP, "no schema yet: the role that creates the ledger owns it", "")
        grant = " ".join(grants_sql(schema, user).split())
        hint = f"A DBA can grant them: {grant}"
        if not self._can("has_schema_privilege(%s, 'USAGE')", schema):
            return (_FAIL, f"role {user} has no USAGE on schema {schema!r}", hint)
        tables, select_only = ledger_tables()
        rows = self.conn.execute(
            "SELECT c.relname AS name, c.relkind AS kind,"
            " has_table_privilege(c.oid, 'SELECT') AS s,"
            " has_table_privilege(c.oid, 'INSERT') AS i,"
            " has_table_privilege(c.oid, 'UPDATE') AS u,"
            " has_table_privilege(c.oid, 'DELETE') AS d"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
            " AND (c.relname = ANY(%s) OR c.relname LIKE 'procrastinate\\_%%')"
            " ORDER BY c.relname",
            (schema, list(tables)),
        ).fetchall()
        missing: list[str] = []
        for r in rows:
            wanted = {"SELECT": r["s"]}
            if r["name"] not in select_only:
                wanted.update({"INSERT": r["i"], "UPDATE": r["u"]})
            # Measured: r2migrate never deletes a ledger row; procrastinate deletes its stale
            # workers and finished jobs, so only its tables need DELETE.
            if r["name"].startswith("procrastinate_"):
                wanted["DELETE"] = r["d"]
            lacking = [p for p, ok in wanted.items() if not ok]
            if lacking:
                missing.append(f"{'/'.join(lacking)} on {r['name']}")
        sequences = self.conn.execute(
            "SELECT s.relname AS name, has_sequence_privilege(s.oid, 'USAGE') AS ok"
            " FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace"
            " WHERE n.nspname = %s AND s.relkind = 'S'",
            (schema,),
        ).fetchall()
        missing += [f"USAGE on sequence {r['name']}" for r in sequences if not r["ok"]]
        functions = self.conn.execute(
            "SELECT p.proname AS name, has_function_privilege(p.oid, 'EXECUTE') AS ok"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname LIKE 'procrastinate\\_%%'",
            (schema,),
        ).fetchall()
        missing += [f"EXECUTE on function {r['name']}" for r in functions if not r["ok"]]
        if missing:
            more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            shown = ", ".join(missing[:6]) + more
            return (_FAIL, f"role {user} lacks {shown} in schema {schema!r}", hint)
        return (
            _OK,
            f"role {user}: USAGE on schema {schema!r}; read/write on {len(rows)} table(s), "
            f"USAGE on {len(sequences)} sequence(s), EXECUTE on {len(functions)} function(s)",
            "",
        )

    def _check_job_queue(self) -> _Result:
        """The `r2migrate worker` queue: its version, its jobs, and jobs of dead workers."""
        from r2migrate import worker as jobs

        assert self.conn is not None
        s = self._settings()
        installed = procrastinate_version()
        found = jobs.queue_status(State(self.conn, s.state_schema), s.stalled_worker_s)
        if found is None:
            return (
                _OK,
                f"no job queue yet; `r2migrate db upgrade` (or the first plan) creates it with "
                f"the ledger (procrastinate {installed})",
                "",
            )
        if not same_minor(found.procrastinate_version, installed):
            return (
                _FAIL,
                f"the job queue was made by procrastinate {found.procrastinate_version}; this "
                f"r2migrate has {installed}",
                "Run workers from the r2migrate that made the queue, or let them finish and "
                f"drop the procrastinate_* tables and {s.state_schema}.queue_schema.",
            )
        counts = found.jobs
        summary = (
            f"procrastinate {found.procrastinate_version}; batch jobs: "
            f"{counts.get('todo', 0)} waiting, {counts.get('doing', 0)} running, "
            f"{counts.get('failed', 0)} failed; {found.workers_alive} worker(s) alive"
        )
        if found.stalled or found.files_held_by_dead:
            return (
                _WARN,
                f"{summary}; {found.stalled} running job(s) and {found.files_held_by_dead} "
                f"file(s) held by workers with no heartbeat for {s.stalled_worker_s:.0f} s",
                "A running `r2migrate worker` queues those jobs again and releases those files "
                "(settled by HEAD) by itself; start one if none runs.",
            )
        return (_OK, summary, "")

    def _check_reference(self, text: str) -> _Result:
        assert self.conn is not None
        ref = catalog.parse_reference(text, id_column=self._settings().reference_id_column)
        rows = catalog.count_source_rows(self.conn, ref)
        # Reading one row proves the name column and the id column exist and are readable.
        first = catalog.iter_source_rows(self.conn, ref)
        try:
            next(first, None)
        finally:
            if isinstance(first, Generator):
                first.close()  # ends its server-side cursor and read-only transaction now
        if rows == 0:
            return (
                _WARN,
                f"{ref.label} is readable but has no rows: nothing to migrate",
                "Check that DATABASE_URL points at the application's database.",
            )
        return (_OK, f"{rows:,} rows; {ref.label} and {ref.id_column} readable", "")


def _pg_version(number: int) -> str:
    """libpq's integer server version as text: 180001 -> 18.1, 90624 -> 9.6.24."""
    if number >= 100000:
        return f"{number // 10000}.{number % 10000}"
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
