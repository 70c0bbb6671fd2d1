"""Sending one claimed file: read or fetch its bytes, hash them, create-only PUT, settle by HEAD.

Must never touch the ledger (it returns an Outcome for the scheduler to record) nor choose which
files to send; it runs in worker threads, one file per call.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from typing import IO, Any, BinaryIO

from r2migrate.errors import (
    BucketError,
    ConfigError,
    FastPutUnsupported,
    ObjectExists,
    SourceChanged,
    SourceError,
    SourceRefused,
    SourceUnavailable,
)
from r2migrate.media.base import open_media_source
from r2migrate.runtime.retry import backoff_s, is_retryable, retry_transient
from r2migrate.s3.bucket import Bucket, ObjectInfo, part_size_for
from r2migrate.s3.fastput import FastPut
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import FileRecord, FileStatus, Outcome

log = logging.getLogger(__name__)

# Parts of one large file sent at once, so a batch holding one big file still uses several
# connections; they stream from the file (no part is held in memory).
PART_WORKERS = 4
# The error code of a file the media server (source = "http") failed to serve, 5xx or reset.
SOURCE_UNAVAILABLE = "source_unavailable"


class _ToBucket:
    """Where a source hands one file's bytes: this run's bucket, small PUTs and parts through
    fastput when it is on (``media.base.Uploader``)."""

    def __init__(self, sender: Sender, rec: FileRecord) -> None:
        self.sender = sender
        self.rec = rec

    def put_bytes(self, data: bytes, sha256_hex: str) -> str:
        return self.sender._put_small(self.rec, data, sha256_hex)

    def put_file(
        self, fh: BinaryIO, *, size_bytes: int, mtime_ns: int, part_size_bytes: int
    ) -> tuple[str, str]:
        fast = self.sender.fast
        sha, result = self.sender.bucket.put_file_multipart(
            self.rec.object_key,
            fh,
            size_bytes=size_bytes,
            mtime_ns=mtime_ns,
            part_size_bytes=part_size_bytes,
            content_type=self.rec.content_type,
            content_encoding=self.rec.content_encoding,
            part_workers=PART_WORKERS,
            send_part=fast.upload_part if fast is not None else None,
        )
        return sha, result.etag

    def put_stream(
        self, body: IO[bytes], *, size_bytes: int, part_size_bytes: int, sha256_hex: str
    ) -> str:
        return self.sender.bucket.put_multipart_checked(
            self.rec.object_key,
            body,
            size_bytes=size_bytes,
            part_size_bytes=part_size_bytes,
            sha256_hex=sha256_hex,
            content_type=self.rec.content_type,
            content_encoding=self.rec.content_encoding,
        ).etag


class Sender:
    """Sends one claimed file with retries; runs in worker threads, never touches the DB."""

    def __init__(self, settings: Settings, bucket: Bucket, stop: threading.Event) -> None:
        self.media = open_media_source(settings)  # MEDIA_ROOT or the application's MEDIA_URL
        self.media.require_configured()
        self.settings = settings
        self.bucket = bucket
        self.stop = stop
        self.rng = random.Random()
        self.retries: Counter[str] = Counter()  # retries per cause, summarised by close()
        self._retry_lock = threading.Lock()
        self.fast: FastPut | None = None
        if settings.fast_put:
            try:
                self.fast = FastPut(settings)
            except ConfigError as exc:
                log.warning("fast_put is off for this run: %s", exc.message)

    def _note_retry(self, code: str, key: str, delay_s: float) -> None:
        """One warning when a cause first appears; the rest are counted (see close): a media
        server that dies must not print one line per file and attempt."""
        with self._retry_lock:
            self.retries[code] += 1
            first = self.retries[code] == 1
        if first:
            log.warning(
                "retrying %s in %.1fs after %s (further retries after %s are counted)",
                key,
                delay_s,
                code,
                code,
            )
        else:
            log.debug("retrying %s in %.1fs after %s", key, delay_s, code)

    def close(self) -> None:
        with self._retry_lock:
            counted, self.retries = self.retries, Counter()
        for code, n in sorted(counted.items()):
            log.warning("%d retries after %s", n, code)
        if self.fast is not None:
            self.fast.close()
        self.media.close()

    def _put_small(self, rec: FileRecord, data: bytes, sha: str) -> str:
        """One create-only PUT: the lean path when on, boto3 for what it cannot send."""
        if self.fast is not None:
            try:
                return self.fast.put_object_checked(
                    rec.object_key,
                    data,
                    sha256_hex=sha,
                    content_type=rec.content_type,
                    content_encoding=rec.content_encoding,
                ).etag
            except FastPutUnsupported:
                pass  # a header value fast_put does not encode: boto3 sends this one
        return self.bucket.put_object_checked(
            rec.object_key,
            data,
            sha256_hex=sha,
            content_type=rec.content_type,
            content_encoding=rec.content_encoding,
        ).etag

    def send(self, rec: FileRecord) -> Outcome:
        events: list[tuple[str, str, dict[str, Any]]] = []
        if rec.previous_status is FileStatus.UPLOADING:
            # A runner died after writing its intent: the PUT may have landed. HEAD before any
            # byte is sent again.
            resolved = self._resolve_abandoned(rec, events)
            if resolved is not None:
                return resolved
        attempt = 0
        while True:
            attempt += 1
            try:
                sha, etag, part_size, size, mtime_ns = self._put(rec)
            except ObjectExists:
                return self._resolve_existing(rec, attempt, events)
            except SourceRefused:
                raise  # 401/403 from the media server: wrong for every file, the run stops
            except SourceChanged as exc:  # while it was read: another try may find it still
                code, message, retryable = exc.problem.value, exc.message, True
            except SourceError as exc:
                events.append(("attempt", "failed", {"code": exc.problem.value}))
                return self._failed(rec, attempt, exc.problem.value, exc.message, events)
            except SourceUnavailable as exc:  # the media server (source = "http"): 5xx, reset
                code, message, retryable = SOURCE_UNAVAILABLE, exc.message, True
            except BucketError as exc:
                code, message, retryable = (
                    exc.code or type(exc).__name__,
                    exc.message,
                    exc.retryable,
                )
            else:
                events.append(("attempt", "uploaded", {"attempt": attempt, "etag": etag}))
                # The ledger row is the record of every upload; the log line is for debugging.
                log.debug(
                    "uploaded %s (%d bytes, attempt %d)",
                    rec.object_key,
                    size,
                    attempt,
                    extra={"batch_id": rec.batch_id, "file_id": rec.file_id, "outcome": "uploaded"},
                )
                return Outcome(
                    row_id=rec.id,
                    status=FileStatus.UPLOADED,
                    attempts_made=attempt,
                    source_sha256=sha,
                    object_sha256=sha,
                    etag=etag,
                    part_size_bytes=part_size,
                    mtime_ns=mtime_ns,
                    size_bytes=size,
                    events=tuple(events),
                )
            events.append(
                ("attempt", "error", {"attempt": attempt, "code": code, "error": message})
            )
            if not retryable or attempt >= self.settings.max_attempts or self.stop.is_set():
                return self._failed(rec, attempt, code, message, events, retryable=retryable)
            delay = backoff_s(
                attempt,
                base_s=self.settings.backoff_base_s,
                max_s=self.settings.backoff_max_s,
                rng=self.rng,
            )
            self._note_retry(code, rec.object_key, delay)
            if self.stop.wait(delay):
                return self._failed(rec, attempt, code, message, events, retryable=retryable)

    def _put(self, rec: FileRecord) -> tuple[str, str, int | None, int, int | None]:
        """The source reads the file and proves it is the one inventory measured; its bytes go
        to the bucket whole (up to the threshold) or in parts."""
        part: int | None = None
        if rec.size_bytes > self.settings.multipart_threshold_bytes:
            part = part_size_for(rec.size_bytes, self.settings.multipart_chunksize_bytes)
        sent = self.media.send(
            rec.relative_path,
            size_bytes=rec.size_bytes,
            mtime_ns=rec.mtime_ns,
            part_size_bytes=part,
            to=_ToBucket(self, rec),
        )
        return sent.sha256_hex, sent.etag, sent.part_size_bytes, sent.size_bytes, sent.mtime_ns

    def _source_sha256(self, name: str) -> tuple[str, int]:
        return self.media.sha256(name)

    def _head(self, key: str) -> ObjectInfo | None:
        """HEAD with the same retry rules as a PUT: transient failures back off and try again."""
        return retry_transient(
            lambda: self.bucket.head(key),
            self.settings,
            is_transient=is_retryable,
            stop=self.stop,
            rng=self.rng,
        )

    def _resolve_abandoned(
        self, rec: FileRecord, events: list[tuple[str, str, dict[str, Any]]]
    ) -> Outcome | None:
        try:
            info = self._head(rec.object_key)
        except BucketError as exc:
            events.append(("resolve", "error", {"error": exc.message}))
            return None
        if info is None:
            events.append(("resolve", "absent", {}))
            return None
        return self._judge_existing(rec, 0, info, events)

    def _resolve_existing(
        self, rec: FileRecord, attempt: int, events: list[tuple[str, str, dict[str, Any]]]
    ) -> Outcome:
        try:
            info = self._head(rec.object_key)
        except BucketError as exc:
            return self._failed(rec, attempt, exc.code or "head_failed", exc.message, events)
        if info is None:  # deleted in between: leave it for the next round
            return self._failed(
                rec, attempt, "vanished", "create-only PUT refused but no object found", events
            )
        return self._judge_existing(rec, attempt, info, events)

    def _judge_existing(
        self,
        rec: FileRecord,
        attempt: int,
        info: ObjectInfo,
        events: list[tuple[str, str, dict[str, Any]]],
    ) -> Outcome:
        """An object holds the key: it is ours only if it carries this file's SHA-256.

        A "not ours" answer is asked again (up to max_attempts HEADs): a response cut inside its
        header block parses as a complete one that lacks headers (http.client stops at EOF), so
        an object of ours can look foreign once; a conflict never rests on a single answer.
        """
        try:
            sha, size = self._source_sha256(rec.relative_path)
        except SourceError as exc:
            return self._failed(rec, attempt, exc.problem.value, exc.message, events)
        except SourceUnavailable as exc:
            return self._failed(
                rec, attempt, SOURCE_UNAVAILABLE, exc.message, events, retryable=True
            )
        looks = 1
        wanted = (sha, size)
        while (info.sha256_hex, info.size_bytes) != wanted and looks < self.settings.max_attempts:
            delay = backoff_s(
                looks,
                base_s=self.settings.backoff_base_s,
                max_s=self.settings.backoff_max_s,
                rng=self.rng,
            )
            if self.stop.wait(delay):
                break
            try:
                again = self._head(rec.object_key)
            except BucketError:
                break
            looks += 1
            if again is None:
                break
            info = again
        object_sha, etag = info.sha256_hex, info.etag
        if object_sha == sha and info.size_bytes == size:
            events.append(("resolve", "ours", {"etag": etag, "looks": looks}))
            log.info(
                "%s already holds this file's SHA-256; not sent again",
                rec.object_key,
                extra={"batch_id": rec.batch_id, "file_id": rec.file_id, "outcome": "resolved"},
            )
            return Outcome(
                row_id=rec.id,
                status=FileStatus.UPLOADED,
                attempts_made=attempt,
                source_sha256=sha,
                object_sha256=object_sha,
                etag=etag,
                size_bytes=size,
                error_code="resolved_by_head",  # the ledger's record of why nothing was sent
                events=tuple(events),
                settled_by_head=True,
            )
        events.append(("resolve", "conflict", {"object_sha256": object_sha, "looks": looks}))
        log.error(
            "%s holds another object; it is never overwritten",
            rec.object_key,
            extra={"batch_id": rec.batch_id, "file_id": rec.file_id, "outcome": "conflict"},
        )
        return Outcome(
            row_id=rec.id,
            status=FileStatus.CONFLICT,
            attempts_made=attempt,
            source_sha256=sha,
            object_sha256=object_sha,
            error_code="conflict",
            error_message="the key holds an object with another SHA-256 (or none of ours)",
            events=tuple(events),
        )

    def _failed(
        self,
        rec: FileRecord,
        attempt: int,
        code: str,
        message: str,
        events: list[tuple[str, str, dict[str, Any]]],
        *,
        retryable: bool = False,
    ) -> Outcome:
        log.error(
            "failed %s after %d attempt(s): %s",
            rec.object_key,
            attempt,
            message,
            extra={"batch_id": rec.batch_id, "file_id": rec.file_id, "outcome": "failed"},
        )
        return Outcome(
            row_id=rec.id,
            status=FileStatus.FAILED,
            attempts_made=attempt,
            error_code=code,
            error_message=message[:2000],
            events=tuple(events),
            retryable=retryable,
        )
