"""Doctor's shared parts: a check's status and row, and the state every group of checks reads.

Must not run a check itself: the checks live in doctor_database, doctor_local and doctor_bucket,
and report/doctor.py runs them in ``CHECK_ORDER``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from r2migrate.errors import ConfigError
from r2migrate.runtime.logs import RedactingFilter
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import Connection


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


_Result = tuple[CheckStatus, str, str]  # status, detail, hint
_OK = CheckStatus.OK
_WARN = CheckStatus.WARN
_FAIL = CheckStatus.FAIL
_SKIP = CheckStatus.SKIP


class _DoctorBase:
    """The attributes ``_Doctor.__init__`` sets, declared once for the check mixins."""

    settings: Settings | None
    config_error: ConfigError | None
    bucket: Bucket | None
    missing: set[str]  # required settings that are not set
    redactor: RedactingFilter
    conn: Connection | None
    endpoint_unreachable: bool
    bucket_denied: bool
    prefix: str
    probe_key: str
    bad_digest_key: str
    probe_body: bytes
    probe_sha: str
    probe_deleted_early: bool
    written: dict[str, set[str]]
    leftovers: list[str]

    def _settings(self) -> Settings:
        assert self.settings is not None  # _blocked skips every check that needs settings
        return self.settings

    def _bucket(self) -> Bucket:
        if self.bucket is None:
            self.bucket = Bucket(self._settings())
        return self.bucket
