"""Preflight: settings, PostgreSQL and schema, sources, MEDIA_ROOT, bucket, R2 capabilities, clock.

Must never touch anything but its own probe objects under ``<location>/.r2migrate-doctor/<uuid>/``:
no write to MEDIA_ROOT, no SQL that changes a table (the schema is not even created), and in the
bucket only create-only PUTs, HEADs and If-Match DELETEs of keys it made up itself. The probe
objects are removed in a ``finally`` (with retries), and anything left is reported by key.

Every check becomes a ``Check`` row (ok / warn / fail / skip, a one-line detail and a hint); a
failed check never stops the others, except those that need it, which are marked ``skip`` with
"needs X". The order of ``CHECK_ORDER`` is the order of the report. Nothing here prints.

This module runs the checks; they live in doctor_database (PostgreSQL), doctor_local (MEDIA_ROOT,
packages, Python) and doctor_bucket (TLS, bucket, clock, probe objects), on doctor_base's state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from r2migrate.errors import (
    BucketError,
    ConfigError,
    PrivilegeMissing,
    ToolkitError,
    TransientBucketError,
)
from r2migrate.media.base import media_setting
from r2migrate.report.doctor_base import (
    _FAIL,
    _OK,
    _SKIP,
    _WARN,
    Check,
    CheckStatus,
    _Result,
)
from r2migrate.report.doctor_bucket import (
    CLEANUP_ATTEMPTS,
    CLEANUP_BACKOFF_S,
    CLOCK_FAIL_S,
    CLOCK_WARN_S,
    _BucketChecks,
)
from r2migrate.report.doctor_database import (
    POSTGRES_SUPPORTED,
    STATEMENT_TIMEOUT_WARN_MS,
    _DatabaseChecks,
)
from r2migrate.report.doctor_database import (
    _pg_version as _pg_version,  # re-exported for tests
)
from r2migrate.report.doctor_local import (
    MEDIA_SAMPLE_FILES,
    MIN_BOTOCORE,
    PACKAGES,
    _LocalChecks,
)
from r2migrate.report.doctor_local import (
    _version_tuple as _version_tuple,  # re-exported for tests
)
from r2migrate.rules import keys
from r2migrate.runtime.logs import RedactingFilter
from r2migrate.s3.bucket import Bucket, tls_hint
from r2migrate.settings.config import Settings, redact_url
from r2migrate.store.ledger import complete_privilege_error

__all__ = [
    "CHECK_ORDER",
    "CLEANUP_ATTEMPTS",
    "CLEANUP_BACKOFF_S",
    "CLOCK_FAIL_S",
    "CLOCK_WARN_S",
    "MEDIA_SAMPLE_FILES",
    "MIN_BOTOCORE",
    "PACKAGES",
    "POSTGRES_SUPPORTED",
    "PROBE_PREFIX",
    "STATEMENT_TIMEOUT_WARN_MS",
    "Check",
    "CheckStatus",
    "DoctorReport",
    "doctor",
]

PROBE_PREFIX = ".r2migrate-doctor"  # under settings.location, one <uuid>/ folder per run

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
    "storage_options",  # under Django only (manage.py r2migrate_doctor)
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
    storage_check: Callable[[], tuple[CheckStatus, str, str]] | None = None,
) -> DoctorReport:
    """Run every check and return the report; ``on_check`` sees each check as it completes.

    ``settings`` may be the ``ConfigError`` that loading them raised: the config check then fails
    with its problems, the checks that need settings are skipped, the rest still run. ``bucket``
    replaces the one built from ``settings`` (same name and client for every bucket check).
    Never raises for a failed check; only ``KeyboardInterrupt`` escapes, after the cleanup.
    ``storage_check`` (from the Django adapter) checks the project's target storage's options.
    """
    return _Doctor(settings, on_check, bucket, storage_check).run()


class _Doctor(_DatabaseChecks, _LocalChecks, _BucketChecks):
    def __init__(
        self,
        settings: Settings | ConfigError,
        on_check: Callable[[Check], None] | None,
        bucket: Bucket | None,
        storage_check: Callable[[], _Result] | None = None,
    ) -> None:
        self.storage_check = storage_check
        self.settings = settings if isinstance(settings, Settings) else None
        self.config_error = settings if isinstance(settings, ConfigError) else None
        self.on_check = on_check
        self.bucket = bucket
        self.checks: list[Check] = []
        self.status: dict[str, CheckStatus] = {}
        self.missing: set[str] = set()  # required settings that are not set
        secrets = self.settings.secret_values() if self.settings else ()
        self.redactor = RedactingFilter(secrets)
        self.conn = None
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
        if self.storage_check is not None:
            self._record("storage_options", self.storage_check)
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


def _fallback_hint(exc: ToolkitError) -> str:
    if isinstance(exc, TransientBucketError):
        return (
            "A transient server error (5xx, SlowDown, timeout, reset): run `r2migrate doctor` "
            "again; if it persists, check the server's status."
        )
    if isinstance(exc, BucketError):
        return "Check that the access key may read, write and delete objects in this bucket."
    return "Run `r2migrate doctor` again after fixing what the detail names."
