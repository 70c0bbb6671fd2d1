"""What verify finds about one file, and the checker that finds it (HEAD, GET, source stat).

Must never modify an object or a source file, nor touch the database: the checker runs in worker
threads and returns a ``Checked``; the verify stage records it.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from enum import StrEnum

from r2migrate.errors import (
    BucketError,
    SourceError,
    SourceUnavailable,
)
from r2migrate.media.base import FileStat, MediaSource
from r2migrate.runtime.retry import Requests
from r2migrate.s3.bucket import Bucket, ObjectInfo, sha256_b64
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import FileRecord

log = logging.getLogger(__name__)


class VerifyOutcome(StrEnum):
    MATCH = "match"  # the object (and the source) are what the ledger says
    DIFFER = "differ"  # the object's size, SHA-256 or content is not the ledger's
    MISSING = "missing"  # no object at the key
    EXTRA = "extra"  # an object under the batch's key space that no ledger row names
    APP_WRITTEN = "app_written"  # an extra the application wrote after the switch: not a failure
    SOURCE_CHANGED = "source_changed"  # the object is intact but the source file moved on
    NOT_UPLOADED = "not_uploaded"  # the row is pending/failed/conflict: nothing to prove yet
    ERROR = "error"  # the check could not be made (endpoint down, source unreadable...)


@dataclass(frozen=True)
class FileCheck:
    """One checked file (or one extra object); ``reason`` says why it is not a match."""

    batch_id: str
    object_key: str
    outcome: VerifyOutcome
    reason: str = ""
    row_id: int | None = None  # None for an extra object
    file_id: str | None = None
    relative_path: str | None = None
    size_bytes: int = 0
    deep: bool = False  # the object's bytes were read back and hashed
    etag: str | None = None  # as the server reported it


@dataclass(frozen=True)
class Checked:
    check: FileCheck
    heads: int = 0
    gets: int = 0
    bytes_read: int = 0
    retryable: bool = False  # an endpoint failure worth counting towards an outage


class Checker:
    """Checks one file; runs in worker threads and never touches the database.

    A request failing transiently (503, SlowDown, a reset) is tried again with backoff, up to
    ``max_attempts``; only then is the file an ``error``, never ``missing`` or ``differ``.
    """

    def __init__(
        self,
        bucket: Bucket,
        media: MediaSource,
        settings: Settings,
        stop: threading.Event,
    ) -> None:
        self.bucket = bucket
        self.media = media
        self.settings = settings
        self.stop = stop
        self.rng = random.Random()

    def check(self, rec: FileRecord, deep: bool) -> Checked:
        ask = Requests(self.settings, self.stop, self.rng)
        read = 0

        def done(
            outcome: VerifyOutcome,
            reason: str = "",
            *,
            etag: str | None = None,
            retryable: bool = False,
        ) -> Checked:
            gets = ask.sent["GET"]
            return Checked(
                file_check(rec, outcome, reason, deep=gets > 0, etag=etag),
                ask.sent["HEAD"],
                gets,
                read,
                retryable,
            )

        expected = rec.object_sha256 or rec.source_sha256
        if expected is None:
            return done(VerifyOutcome.ERROR, "the ledger holds no SHA-256 for this file")
        try:
            info = ask("HEAD", lambda: self.bucket.head(rec.object_key))
        except BucketError as exc:
            return done(VerifyOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
        if info is None:
            return done(VerifyOutcome.MISSING, "no object at the key")
        mismatch = _compare_head(rec, info, expected)
        if mismatch:
            return done(VerifyOutcome.DIFFER, mismatch, etag=info.etag)
        rewritten = bool(rec.etag) and info.etag != rec.etag
        if deep or rewritten:
            try:
                digest, size = ask("GET", lambda: self.bucket.get_sha256(rec.object_key))
            except BucketError as exc:
                if exc.code in ("NoSuchKey", "404"):
                    return done(VerifyOutcome.MISSING, "the object vanished while it was read")
                return done(VerifyOutcome.ERROR, ask.why(exc), retryable=exc.retryable)
            read = size
            if size != rec.size_bytes or digest != expected:
                what = "rewritten (ETag changed) and its" if rewritten else "the object's"
                return done(
                    VerifyOutcome.DIFFER,
                    f"{what} content hashes to {digest} ({size} bytes), "
                    f"the ledger says {expected} ({rec.size_bytes} bytes)",
                    etag=info.etag,
                )
        try:
            changed = self._source_changed(rec, deep)
        except SourceUnavailable as exc:
            return done(VerifyOutcome.ERROR, exc.message, etag=info.etag, retryable=True)
        if changed:
            return done(VerifyOutcome.SOURCE_CHANGED, changed, etag=info.etag)
        return done(VerifyOutcome.MATCH, etag=info.etag)

    def _source_changed(self, rec: FileRecord, deep: bool) -> str:
        """Why the source no longer matches the ledger, or '' when it still does.

        Raises SourceUnavailable when the media server (``source = "http"``) cannot answer.
        """
        try:
            found = self._stat_source(rec.relative_path)
        except SourceError as exc:
            self._raise_if_the_server_failed(exc)
            return f"source {exc.problem.value}: {exc.message}"
        moved = found.size_bytes != rec.size_bytes or not _same_mtime(found.mtime_ns, rec.mtime_ns)
        if deep and rec.source_sha256 is not None:
            try:
                digest, size = self.media.sha256(rec.relative_path)
            except SourceError as exc:
                self._raise_if_the_server_failed(exc)
                return f"source {exc.problem.value}: {exc.message}"
            if digest != rec.source_sha256:
                return (
                    f"the source now hashes to {digest} ({size} bytes), "
                    f"the ledger says {rec.source_sha256}"
                )
            return ""  # same bytes: a touched mtime alone is no change
        if moved:
            return (
                f"the source is now {found.size_bytes} bytes, mtime_ns {found.mtime_ns}; "
                f"the ledger says {rec.size_bytes} bytes, mtime_ns {rec.mtime_ns}"
            )
        return ""

    def _raise_if_the_server_failed(self, exc: SourceError) -> None:
        """Over HTTP only a 404 says something about the file: 401/403 stops verify (the
        credentials are wrong for every file), any other refusal is an error row."""
        error = self.media.about_the_source(exc)
        if error is exc:
            raise exc
        if error is not None:
            raise error from exc

    def _stat_source(self, name: str) -> FileStat:
        return self.media.stat(name)


def _same_mtime(found: int | None, recorded: int | None) -> bool:
    """Equal, or equal to the second when one side came from HTTP's Last-Modified (whole
    seconds): a file uploaded over HTTP and verified on the disk, or the other way round."""
    if found is None or recorded is None or found == recorded:
        return True
    second = 1_000_000_000
    coarse = found % second == 0 or recorded % second == 0
    return coarse and found // second == recorded // second


def _compare_head(rec: FileRecord, info: ObjectInfo, expected: str) -> str:
    """What a HEAD shows to be wrong, or '' when size, metadata and checksum agree."""
    if info.size_bytes != rec.size_bytes:
        return f"size {info.size_bytes} bytes, the ledger says {rec.size_bytes}"
    if info.sha256_hex is None:
        return "the object carries no sha256 metadata: not written by r2migrate"
    if info.sha256_hex != expected:
        return f"sha256 metadata {info.sha256_hex}, the ledger says {expected}"
    checksum = info.checksum_sha256
    # A multipart object reports a checksum of its part checksums ("...-N"): not comparable.
    if checksum and "-" not in checksum and checksum != sha256_b64(expected):
        return f"the server's ChecksumSHA256 {checksum} is not the ledger's SHA-256"
    return ""


def file_check(
    rec: FileRecord,
    outcome: VerifyOutcome,
    reason: str = "",
    *,
    deep: bool = False,
    etag: str | None = None,
) -> FileCheck:
    return FileCheck(
        batch_id=rec.batch_id,
        object_key=rec.object_key,
        outcome=outcome,
        reason=reason,
        row_id=rec.id,
        file_id=rec.file_id,
        relative_path=rec.relative_path,
        size_bytes=rec.size_bytes,
        deep=deep,
        etag=etag,
    )
