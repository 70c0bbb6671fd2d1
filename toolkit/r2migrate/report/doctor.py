"""Preflight: settings, PostgreSQL and schema, sources, MEDIA_ROOT, bucket, R2 capabilities, clock.

Must never touch anything but its own probe objects under ``<location>/.r2migrate-doctor/<uuid>/``:
no write to MEDIA_ROOT, no SQL that changes a table (the schema is not even created), and in the
bucket only create-only PUTs, HEADs and If-Match DELETEs of keys it made up itself. The probe
objects are removed in a ``finally`` (with retries), and anything left is reported by key.

Every check becomes a ``Check`` row (ok / warn / fail / skip, a one-line detail and a hint); a
failed check never stops the others, except those that need it, which are marked ``skip`` with
"needs X". The order of ``CHECK_ORDER`` is the order of the report. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import platform
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from r2migrate.errors import (
    BucketError,
    BucketUnavailable,
    ConfigError,
    DigestMismatch,
    ObjectChanged,
    ObjectExists,
    PrivilegeMissing,
    Problem,
    SourceError,
    SourceRefused,
    ToolkitError,
    TransientBucketError,
)
from r2migrate.media import disk as source
from r2migrate.media.base import media_setting
from r2migrate.media.http import MediaServer
from r2migrate.rules import keys
from r2migrate.runtime.logs import RedactingFilter
from r2migrate.s3.bucket import Bucket, sha256_b64, tls_hint, tls_verify
from r2migrate.settings.config import Settings, redact_url
from r2migrate.store import catalog
from r2migrate.store.ledger import (
    SCHEMA_VERSION,
    Connection,
    LedgerState,
    LedgerStatus,
    State,
    complete_privilege_error,
    connect,
    grants_sql,
    ledger_tables,
    procrastinate_version,
    same_minor,
)

__all__ = [
    "CHECK_ORDER",
    "PROBE_PREFIX",
    "Check",
    "CheckStatus",
    "DoctorReport",
    "doctor",
]

PROBE_PREFIX = ".r2migrate-doctor"  # under settings.location, one <uuid>/ folder per run
CLOCK_WARN_S = 60.0
CLOCK_FAIL_S = 15 * 60.0  # SigV4 rejects a request signed more than 15 minutes off
CLEANUP_ATTEMPTS = 4  # HEAD + DELETE rounds per leftover probe object
CLEANUP_BACKOFF_S = 0.25  # doubled per round: 0.25 + 0.5 + 1 + 2 s at most
MEDIA_SAMPLE_FILES = 5
MIN_BOTOCORE = (1, 36)  # request_checksum_calculation / response_checksum_validation
PACKAGES = ("boto3", "botocore", "psycopg", "click", "r2migrate")
POSTGRES_SUPPORTED = (13, 18)  # majors tested; procrastinate needs 13 or later
STATEMENT_TIMEOUT_WARN_MS = 60_000  # below this, long reports may be cut off
_WRONG_ETAG = '"00000000000000000000000000000000"'  # no object has this ETag (MD5 of nothing ≠ 0)

# The report's order; a reference check appears once per configured reference in its place.
CHECK_ORDER = (
    "config",
    "postgres",
    "schema",
    "privileges",
    "job_queue",
    "reference",
    "media_root",
    "media_url",
    "ca_bundle",
    "bucket",
    "clock_skew",
    "probe_put",
    "probe_head",
    "if_none_match",
    "checksum_sha256",
    "conditional_delete",
    "probe_delete",
    "probe_cleanup",
    "packages",
    "python",
)


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but something is worth knowing
    FAIL = "fail"  # r2migrate will not work (or not safely) until this is fixed
    SKIP = "skip"  # not run: an earlier check it needs did not pass


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report; ``detail`` and ``hint`` are single lines, never secrets."""

    name: str  # e.g. "postgres", "reference list_cutter_savedfile.file_path"
    status: CheckStatus
    detail: str
    hint: str = ""  # what to do; empty when there is nothing to do
    duration_ms: float = 0.0


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]
    probe_prefix: str | None = None  # the scratch prefix used this run, when a bucket was probed
    leftover_keys: tuple[str, ...] = ()  # probe objects that could not be removed

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings and skips after a pass do not count)."""
        return not any(c.status is CheckStatus.FAIL for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is CheckStatus.FAIL)

    @property
    def counts(self) -> dict[str, int]:
        """Checks per status, every status present: ``{"ok": 9, "warn": 1, ...}``."""
        out = {s.value: 0 for s in CheckStatus}
        for c in self.checks:
            out[c.status.value] += 1
        return out

    def get(self, name: str) -> Check:
        """The check called ``name``; KeyError when the report has none."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``ok``, ``counts``, ``checks`` (dicts), the probe prefix and leftovers."""
        return {
            "ok": self.ok,
            "counts": self.counts,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status.value,
                    "detail": c.detail,
                    "hint": c.hint,
                    "duration_ms": c.duration_ms,
                }
                for c in self.checks
            ],
            "probe_prefix": self.probe_prefix,
            "leftover_keys": list(self.leftover_keys),
        }


def doctor(
    settings: Settings | ConfigError,
    *,
    on_check: Callable[[Check], None] | None = None,
    bucket: Bucket | None = None,
) -> DoctorReport:
    """Run every check and return the report; ``on_check`` sees each check as it completes.

    ``settings`` may be the ``ConfigError`` that loading them raised: the config check then fails
    with its problems, the checks that need settings are skipped, the rest still run. ``bucket``
    replaces the one built from ``settings`` (same name and client for every bucket check).
    Never raises for a failed check; only ``KeyboardInterrupt`` escapes, after the cleanup.
    """
    return _Doctor(settings, on_check, bucket).run()


_Result = tuple[CheckStatus, str, str]  # status, detail, hint
_OK = CheckStatus.OK
_WARN = CheckStatus.WARN
_FAIL = CheckStatus.FAIL
_SKIP = CheckStatus.SKIP


class _Doctor:
    def __init__(
        self,
        settings: Settings | ConfigError,
        on_check: Callable[[Check], None] | None,
        bucket: Bucket | None,
    ) -> None:
        self.settings = settings if isinstance(settings, Settings) else None
        self.config_error = settings if isinstance(settings, ConfigError) else None
        self.on_check = on_check
        self.bucket = bucket
        self.checks: list[Check] = []
        self.status: dict[str, CheckStatus] = {}
        self.missing: set[str] = set()  # required settings that are not set
        secrets = self.settings.secret_values() if self.settings else ()
        self.redactor = RedactingFilter(secrets)
        self.conn: Connection | None = None
        self.endpoint_unreachable = False
        self.bucket_denied = False
        run_id = uuid.uuid4()
        location = self.settings.location if self.settings else ""
        self.prefix = keys.object_key_for(f"{PROBE_PREFIX}/{run_id}", location=location)
        self.probe_key = f"{self.prefix}/probe"
        self.bad_digest_key = f"{self.prefix}/bad-digest"
        self.probe_body = f"r2migrate doctor probe {run_id}\n".encode()
        self.probe_sha = hashlib.sha256(self.probe_body).hexdigest()
        self.probe_deleted_early = False
        # Every key a PUT was attempted on, with each SHA-256 (metadata) an object there may
        # carry: registered before the PUT, so a PUT whose answer was lost is cleaned up too.
        self.written: dict[str, set[str]] = {}
        self.leftovers: list[str] = []

    # -- running ----------------------------------------------------------------------------

    def run(self) -> DoctorReport:
        self._record("config", self._check_config)
        try:
            self._record("postgres", self._check_postgres, needs_settings=("database_url",))
            self._record("schema", self._check_schema, needs=("postgres",))
            self._record("privileges", self._check_privileges, needs=("schema",))
            self._record("job_queue", self._check_job_queue, needs=("postgres",))
            refs = self.settings.references if self.settings else ()
            for ref in refs:
                check = functools.partial(self._check_reference, ref)
                self._record(f"reference {ref}", check, needs=("postgres",))
            if not refs:  # settings did not load: one placeholder row, always skipped
                self._record("reference", lambda: (_SKIP, "", ""), needs=("postgres",))
        finally:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
        where = media_setting(self.settings) if self.settings else "media_root"
        media_check = {"media_root": self._check_media_root, "media_url": self._check_media_url}
        self._record(where, media_check[where], needs_settings=(where,))
        bucket_needs = ("bucket_name", "endpoint_url", "access_key", "secret_key")
        self._record("ca_bundle", self._check_ca_bundle, needs_settings=("endpoint_url",))
        self._record(
            "bucket", self._check_bucket, needs=("ca_bundle",), needs_settings=bucket_needs
        )
        self._record("clock_skew", self._check_clock, needs_settings=("endpoint_url",))
        try:
            self._record("probe_put", self._check_probe_put, needs=("bucket",))
            after_put = ("probe_put",)
            self._record("probe_head", self._check_probe_head, needs=after_put)
            self._record("if_none_match", self._check_if_none_match, needs=after_put)
            self._record("checksum_sha256", self._check_checksum, needs=after_put)
            self._record("conditional_delete", self._check_conditional_delete, needs=after_put)
            self._record("probe_delete", self._check_probe_delete, needs=after_put)
        finally:
            # Also on KeyboardInterrupt: the probe objects must not outlive the run.
            self._record("probe_cleanup", self._check_cleanup)
        self._record("packages", self._check_packages)
        self._record("python", self._check_python)
        return DoctorReport(
            checks=tuple(self.checks),
            probe_prefix=self.prefix if self.written else None,
            leftover_keys=tuple(self.leftovers),
        )

    def _record(
        self,
        name: str,
        fn: Callable[[], _Result],
        *,
        needs: tuple[str, ...] = (),
        needs_settings: tuple[str, ...] = (),
    ) -> None:
        started = time.perf_counter()
        result = self._blocked(needs, needs_settings)
        if result is None:
            try:
                result = fn()
            except ToolkitError as exc:
                if isinstance(exc, PrivilegeMissing) and self.conn is not None:
                    schema = self._settings().state_schema
                    complete_privilege_error(exc, schema=schema, role=self.conn.info.user)
                result = (_FAIL, exc.message, exc.hint or _fallback_hint(exc))
            except ssl.SSLError as exc:  # a certificate or bundle problem: a setting, not a bug
                hint = tls_hint(self.settings) if self.settings is not None else ""
                result = (_FAIL, f"TLS: {exc}", hint)
            except Exception as exc:  # a check must never stop the others
                result = (
                    _FAIL,
                    f"unexpected {type(exc).__name__}: {exc}",
                    "This is a bug in r2migrate; please report it with `r2migrate doctor --json`.",
                )
        status, detail, hint = result
        check = Check(
            name=name,
            status=status,
            detail=self._one_line(detail),
            hint=self._one_line(hint),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self.checks.append(check)
        self.status[name] = status
        if self.on_check is not None:
            self.on_check(check)

    def _blocked(self, needs: tuple[str, ...], needs_settings: tuple[str, ...]) -> _Result | None:
        if self.settings is None and (needs or needs_settings):
            return (_SKIP, "needs valid settings (see config)", "")
        absent = [n for n in needs_settings if n in self.missing]
        if absent:
            return (_SKIP, f"needs {', '.join(absent)} (not set, see config)", "")
        for dep in needs:
            if self.status.get(dep) not in (_OK, _WARN):
                return (_SKIP, f"needs {dep} (which did not pass)", "")
        return None

    def _one_line(self, text: str) -> str:
        return self.redactor.redact(" ".join(text.split()))

    def _settings(self) -> Settings:
        assert self.settings is not None  # _blocked skips every check that needs settings
        return self.settings

    # -- settings ---------------------------------------------------------------------------

    def _check_config(self) -> _Result:
        if self.config_error is not None:
            return (_FAIL, "; ".join(self.config_error.problems), self.config_error.hint)
        s = self._settings()
        required = ("database_url", *s.source_settings, "bucket_name", "access_key", "secret_key")
        hints = []
        for name in (*required, "endpoint_url"):
            try:
                s.require(name)
            except ConfigError as exc:
                self.missing.add(name)
                hints.extend(exc.problems)
        if self.missing:
            shown = [n for n in (*required, "endpoint_url") if n in self.missing]
            return (_FAIL, f"missing required settings: {', '.join(shown)}", "; ".join(hints))
        endpoint = redact_url(s.effective_endpoint_url or "")
        detail = (
            f"settings valid; bucket {s.bucket_name} at {endpoint}, "
            f"{len(s.references)} reference(s), media_root {s.media_root}"
        )
        if not s.verify:
            return (
                _WARN,
                detail + "; TLS certificate verification is off (verify = false)",
                "Turn verify back on unless this is a test server with a self-signed certificate.",
            )
        return (_OK, detail, "")

    # -- PostgreSQL -------------------------------------------------------------------------

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

    # -- MEDIA_ROOT -------------------------------------------------------------------------

    def _check_media_root(self) -> _Result:
        root = self._settings().media_root
        assert root is not None
        hint = "Set media_root to the folder Django's MEDIA_ROOT points at."
        if not root.exists():
            return (_FAIL, f"MEDIA_ROOT {root} does not exist", hint)
        if not root.is_dir():
            return (_FAIL, f"MEDIA_ROOT {root} is not a directory", hint)
        names = list(islice(source.iter_media_files(root), MEDIA_SAMPLE_FILES))
        if not names:
            return (
                _WARN,
                f"MEDIA_ROOT {root} is readable but holds no files",
                "Check that media_root is the folder the application stores uploads in.",
            )
        with source.open_media_file(root, names[0]) as handle:
            handle.read(1)  # proves read permission on a file, not only on the listing
        more = "+" if len(names) == MEDIA_SAMPLE_FILES else ""
        return (_OK, f"readable: {len(names)}{more} files found, one opened and read", "")

    def _check_media_url(self) -> _Result:
        """source = "http": the media server answers, and accepts the auth header if one is set.

        Asks for a name no application stores: 404 is the expected answer, 401/403 fails.
        """
        probe = f"r2migrate-doctor-probe-{uuid.uuid4().hex}.txt"
        with MediaServer.from_settings(self._settings()) as server:
            try:
                server.stat(probe)
            except SourceRefused:
                raise
            except SourceError as exc:
                if exc.problem is not Problem.MISSING:
                    raise
                return (_OK, f"{server.media_url} answers (404 for a probe name, as expected)", "")
        return (_OK, f"{server.media_url} answers", "")

    # -- the bucket -------------------------------------------------------------------------

    def _bucket(self) -> Bucket:
        if self.bucket is None:
            self.bucket = Bucket(self._settings())
        return self.bucket

    def _check_ca_bundle(self) -> _Result:
        """The CA bundle: readable, PEM, and the endpoint's certificate verifies against it."""
        s = self._settings()
        endpoint = s.effective_endpoint_url or ""
        where = s.sources.get("ca_bundle", "default")
        if not s.verify:
            return (_SKIP, "verify is false: no certificate is checked", "")
        if s.ca_bundle is None:
            from botocore.httpsession import get_cert_path

            context = ssl.create_default_context(cafile=get_cert_path(True))
            named = "certifi's CA bundle (ca_bundle is not set)"
        else:
            named = f"ca_bundle {s.ca_bundle} (from {where})"
            try:
                pem = s.ca_bundle.read_bytes()
            except OSError as exc:
                return (
                    _FAIL,
                    f"{named} cannot be read: {exc.strerror or exc}",
                    "Point ca_bundle at a readable PEM file of CA certificates, or clear it "
                    "(`--set ca_bundle=`, or unset AWS_CA_BUNDLE) to use certifi's bundle.",
                )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                context.load_verify_locations(cadata=pem.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError):
                return (
                    _FAIL,
                    f"{named} is not a PEM file of CA certificates "
                    "('-----BEGIN CERTIFICATE-----' blocks)",
                    "Point ca_bundle at the PEM file of the CA that signed the endpoint's "
                    "certificate, or clear it (`--set ca_bundle=`, or unset AWS_CA_BUNDLE).",
                )
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            return (_OK, f"{named} is valid; the endpoint is not HTTPS", "")
        try:
            with (
                socket.create_connection(
                    (parts.hostname, parts.port or 443), timeout=s.connect_timeout_s
                ) as raw,
                context.wrap_socket(raw, server_hostname=parts.hostname),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (
                _FAIL,
                f"{redact_url(endpoint)}'s certificate does not verify against {named}: "
                f"{exc.verify_message or exc}",
                tls_hint(s),
            )
        except (OSError, ssl.SSLError) as exc:
            return (_WARN, f"{named} is valid; the endpoint did not answer TLS: {exc}", "")
        return (_OK, f"{redact_url(endpoint)}'s certificate verifies against {named}", "")

    def _check_bucket(self) -> _Result:
        bucket = self._bucket()
        started = time.perf_counter()
        try:
            bucket.check()
        except BucketUnavailable:
            self.endpoint_unreachable = True
            raise
        except BucketError as exc:
            self.bucket_denied = exc.code != "NoSuchBucket"
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        endpoint = redact_url(self._settings().effective_endpoint_url or "")
        return (_OK, f"HEAD bucket {bucket.name} at {endpoint} in {elapsed_ms:.0f} ms", "")

    def _check_clock(self) -> _Result:
        if self.endpoint_unreachable:
            return (_SKIP, "needs the endpoint to answer (see bucket)", "")
        s = self._settings()
        endpoint = s.effective_endpoint_url or ""
        before = time.time()
        try:
            date = _server_date(endpoint, verify=tls_verify(s), timeout_s=s.connect_timeout_s)
        except BucketUnavailable as exc:
            return (
                _WARN,
                f"clock skew not measured: {exc.message}",
                "Make sure this machine's clock is synchronised (NTP).",
            )
        after = time.time()
        if date is None:
            return (
                _WARN,
                "the server sent no Date header: clock skew not measured",
                "Make sure this machine's clock is synchronised (NTP).",
            )
        # Date has whole seconds: the server's time lies in [date, date + 1).
        skew_s = date + 0.5 - (before + after) / 2
        margin_s = 0.5 + (after - before) / 2
        size = abs(skew_s)
        if size <= margin_s:
            return (_OK, f"in step with the server's clock (within {margin_s:.1f} s)", "")
        way = "behind" if skew_s > 0 else "ahead of"
        detail = f"this machine is {size:.0f} s {way} the server's clock (±{margin_s:.1f} s)"
        if size > CLOCK_FAIL_S:
            why = " This is why the bucket check was denied." if self.bucket_denied else ""
            return (
                _FAIL,
                detail,
                "S3 signatures are refused more than 15 minutes off (RequestTimeTooSkewed): "
                "synchronise the clock (NTP, e.g. `timedatectl set-ntp true`)." + why,
            )
        if size > CLOCK_WARN_S:
            return (
                _WARN,
                detail,
                "Synchronise the clock (NTP); at 15 minutes off every request is refused.",
            )
        return (_OK, detail, "")

    # -- the probe --------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, sha256_hex: str) -> str:
        self.written.setdefault(key, set()).add(sha256_hex)
        result = self._bucket().put_object_checked(
            key, body, sha256_hex=sha256_hex, content_type="text/plain"
        )
        return result.etag

    def _check_probe_put(self) -> _Result:
        self._put(self.probe_key, self.probe_body, self.probe_sha)
        return (
            _OK,
            f"create-only PUT with ChecksumSHA256 of {len(self.probe_body)} bytes "
            f"to {self.probe_key}",
            "",
        )

    def _check_probe_head(self) -> _Result:
        info = self._bucket().head(self.probe_key)
        if info is None:
            return (
                _FAIL,
                "HEAD found no object right after the PUT",
                "r2migrate needs read-after-write consistency (R2 and S3 have it).",
            )
        wrong = []
        if info.size_bytes != len(self.probe_body):
            wrong.append(f"size {info.size_bytes} instead of {len(self.probe_body)}")
        if info.sha256_hex != self.probe_sha:
            wrong.append("x-amz-meta-sha256 missing or different")
        stored = info.checksum_sha256
        if stored and stored != sha256_b64(self.probe_sha):
            wrong.append("the server stored another ChecksumSHA256")
        if wrong:
            return (
                _FAIL,
                "HEAD after PUT: " + "; ".join(wrong),
                "r2migrate proves an object is its own by this metadata; the server must keep "
                "user metadata (x-amz-meta-*) unchanged.",
            )
        reported = (
            "the server reports ChecksumSHA256 too"
            if stored
            else "the server does not report ChecksumSHA256 on HEAD"
        )
        return (_OK, f"HEAD shows size and our sha256 metadata; {reported}", "")

    def _check_if_none_match(self) -> _Result:
        body = self.probe_body + b"second write: must be refused\n"
        hint = (
            "r2migrate promises never to overwrite an object (PUT If-None-Match: *); "
            "do not migrate to this server until it refuses the second write with 412."
        )
        try:
            self._put(self.probe_key, body, hashlib.sha256(body).hexdigest())
        except ObjectExists:
            return (
                _OK,
                "a second PUT to the probe key was refused (412): writes are create-only",
                "",
            )
        except BucketError as exc:
            return (_FAIL, f"create-only PUT not confirmed: {exc.message}", hint)
        return (_FAIL, "the server overwrote the probe object despite If-None-Match: *", hint)

    def _check_checksum(self) -> _Result:
        body = self.probe_body + b"wrong checksum: must be refused\n"
        wrong_hex = hashlib.sha256(b"not " + body).hexdigest()
        try:
            self._put(self.bad_digest_key, body, wrong_hex)
        except DigestMismatch:
            return (
                _OK,
                "a PUT with a wrong ChecksumSHA256 was refused (BadDigest): SHA-256 is checked "
                "on upload",
                "",
            )
        except BucketError as exc:
            return (
                _WARN,
                f"SHA-256 enforcement not confirmed: {exc.message}",
                "Run `r2migrate verify --deep` after each batch to re-hash the objects.",
            )
        return (
            _WARN,
            "the server accepted a PUT whose ChecksumSHA256 did not match the body: SHA-256 is "
            "not enforced server-side",
            "Uploads are still hashed locally, but only `r2migrate verify --deep` (GET and "
            "re-hash) proves the bytes arrived intact on this server.",
        )

    def _check_conditional_delete(self) -> _Result:
        hint = (
            "Rollback deletes with If-Match so a replaced object is never deleted; on this "
            "server that window stays open: avoid writing the bucket while rolling back."
        )
        try:
            self._bucket().delete_if_match(self.probe_key, _WRONG_ETAG)
        except ObjectChanged:
            return (_OK, "a DELETE with a wrong If-Match was refused (412)", "")
        except BucketError as exc:
            return (_WARN, f"conditional DELETE not confirmed: {exc.message}", hint)
        self.probe_deleted_early = self._bucket().head(self.probe_key) is None
        gone = " and deleted the probe object" if self.probe_deleted_early else ""
        return (_WARN, f"the server ignored If-Match on DELETE{gone}", hint)

    def _check_probe_delete(self) -> _Result:
        bucket = self._bucket()
        info = bucket.head(self.probe_key)
        if info is None:
            if self.probe_deleted_early:
                return (_OK, "already deleted by the DELETE the server did not refuse", "")
            return (_FAIL, "the probe object vanished before its DELETE", "")
        bucket.delete_if_match(self.probe_key, info.etag)
        if bucket.head(self.probe_key) is not None:
            return (
                _FAIL,
                "DELETE with If-Match was answered but the object is still there",
                "Rollback could not remove objects on this server.",
            )
        return (_OK, "DELETE with If-Match on its ETag; HEAD confirms it is gone", "")

    def _check_cleanup(self) -> _Result:
        if not self.written:
            return (_SKIP, "nothing was written", "")
        removed: list[str] = []
        failures: list[str] = []
        for key, digests in self.written.items():
            outcome, reason = self._remove(key, digests)
            if outcome == "removed":
                removed.append(f"{key} ({reason})")
            elif outcome == "left":
                self.leftovers.append(key)
                failures.append(f"{key} ({reason})")
        if failures:
            return (
                _FAIL,
                f"{len(failures)} probe object(s) left in bucket {self._bucket().name}: "
                + ", ".join(failures),
                "Delete them once the server accepts deletes (e.g. `aws s3 rm "
                f"s3://{self._bucket().name}/{self.leftovers[0]}`); doctor wrote nothing else.",
            )
        if removed:
            return (
                _OK,
                f"removed what a failed step left: {', '.join(removed)}; nothing left under "
                f"{self.prefix}/",
                "",
            )
        return (_OK, f"nothing left under {self.prefix}/ ({len(self.written)} key(s) checked)", "")

    def _remove(self, key: str, digests: set[str]) -> tuple[str, str]:
        """("absent" | "removed" | "left", why): HEAD, and delete only an object we wrote."""
        bucket = self._bucket()
        deletes = 0
        last = "still present after the DELETEs"
        for round_ in range(CLEANUP_ATTEMPTS + 1):
            if round_:
                time.sleep(CLEANUP_BACKOFF_S * 2 ** (round_ - 1))
            try:
                info = bucket.head(key)
                if info is None:
                    return ("removed", f"after {deletes} DELETE(s)") if deletes else ("absent", "")
                if round_ == CLEANUP_ATTEMPTS:
                    break  # the last round only looks
                if info.sha256_hex not in digests:
                    return ("left", "holds an object doctor did not write: left alone")
                deletes += 1
                bucket.delete_if_match(key, info.etag)
            except (TransientBucketError, ObjectChanged) as exc:
                last = exc.message
            except BucketError as exc:
                return ("left", exc.message)
        return ("left", last)

    # -- the environment --------------------------------------------------------------------

    def _check_packages(self) -> _Result:
        versions: dict[str, str] = {}
        absent = []
        for name in PACKAGES:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                absent.append(name)
        shown = ", ".join(f"{n} {v}" for n, v in versions.items())
        if absent:
            return (
                _FAIL,
                f"not installed: {', '.join(absent)}; {shown}",
                "Reinstall r2migrate: `pip install r2migrate` pulls in its dependencies.",
            )
        botocore = _version_tuple(versions["botocore"])
        if botocore < MIN_BOTOCORE:
            return (
                _FAIL,
                f"botocore {versions['botocore']} is older than 1.36; {shown}",
                "Upgrade boto3/botocore: `pip install -U 'boto3>=1.36'`.",
            )
        return (
            _OK,
            f"{shown} (botocore ≥ 1.36 would add CRC checksums: r2migrate turns them off with "
            "when_required and sends SHA-256 itself)",
            "",
        )

    def _check_python(self) -> _Result:
        return (
            _OK,
            f"Python {platform.python_version()} ({platform.python_implementation()}) "
            f"at {sys.executable}",
            "",
        )


def _fallback_hint(exc: ToolkitError) -> str:
    if isinstance(exc, TransientBucketError):
        return (
            "A transient server error (5xx, SlowDown, timeout, reset): run `r2migrate doctor` "
            "again; if it persists, check the server's status."
        )
    if isinstance(exc, BucketError):
        return "Check that the access key may read, write and delete objects in this bucket."
    return "Run `r2migrate doctor` again after fixing what the detail names."


def _server_date(endpoint_url: str, *, verify: bool | str, timeout_s: float) -> float | None:
    """The endpoint's ``Date`` header (epoch seconds) from an unsigned HEAD; None when absent.

    Unsigned on purpose: it answers even when the clock is so far off that signed requests are
    refused, which is when the number matters most. Any status (403, 405) carries the header.
    """
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(endpoint_url, method="HEAD")  # noqa: S310 (http(s) checked by config)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            value = response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        value = exc.headers.get("Date")
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BucketUnavailable(
            f"Cannot reach the S3 endpoint to read its clock: {reason}"
        ) from exc
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _pg_version(number: int) -> str:
    """libpq's integer server version as text: 180001 -> 18.1, 90624 -> 9.6.24."""
    if number >= 100000:
        return f"{number // 10000}.{number % 10000}"
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(_leading_digits(piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _leading_digits(piece: str) -> Iterator[str]:
    for ch in piece:
        if not ch.isdigit():
            return
        yield ch
