"""Stage 3: run batches. Claim files, hash, create-only PUT with SHA-256, retry, record, resume.

Must not choose which files to migrate or compute keys (plan did); it only sends what the ledger
holds, writing the intent (`uploading`) before each PUT and the outcome after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.queues
import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO

from r2migrate.errors import (
    AccessDenied,
    BatchNotFound,
    BatchRolledBack,
    BucketError,
    BucketUnavailable,
    ConfigError,
    DatabaseUnavailable,
    ExitCode,
    Interrupted,
    NoSuchBucket,
    ObjectExists,
    SourceError,
    SourceRefused,
    SourceUnavailable,
    ToolkitError,
)
from r2migrate.media.base import SourceChanged, open_media_source
from r2migrate.rules import binding
from r2migrate.runtime.logs import configure_logging
from r2migrate.runtime.pool import collect_finished
from r2migrate.runtime.retry import backoff_s, is_retryable, retry_transient
from r2migrate.s3.bucket import Bucket, ObjectInfo, part_size_for
from r2migrate.s3.fastput import FastPut
from r2migrate.settings.config import Settings
from r2migrate.store import catalog
from r2migrate.store.ledger import (
    Batch,
    BatchStatus,
    FileRecord,
    FileStatus,
    Outcome,
    State,
    new_owner_id,
)

log = logging.getLogger(__name__)


FLUSH_EVERY_S = 0.5  # ledger writes are grouped: one transaction per flush, not per file
FLUSH_EVERY_FILES = 64
# Parts of one large file sent at once, so a batch holding one big file still uses several
# connections; they stream from the file (no part is held in memory).
PART_WORKERS = 4


@dataclass(frozen=True)
class Progress:
    batch_id: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    last_key: str
    last_status: str


@dataclass(frozen=True)
class BatchResult:
    """What one runner did for one batch. ``uploaded`` files had their bytes sent;
    ``resolved_by_head`` files were found by HEAD already in the bucket with their SHA-256 and
    recorded as uploaded without sending anything; the two never overlap."""

    batch_id: str
    status: BatchStatus
    uploaded: int
    skipped: int
    failed: int
    conflict: int
    resolved_by_head: int
    bytes_sent: int
    attempts: int
    elapsed_s: float  # from this batch's first claim to its final status
    failures: tuple[tuple[str, str, str], ...] = field(default=())  # (key, code, message)

    @property
    def files_per_s(self) -> float:
        done = self.uploaded + self.resolved_by_head + self.skipped
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes_sent / 2**20 / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class RunSummary:
    """One run. ``elapsed_s`` is its wall-clock time: batches run side by side (pipelined, or
    in several processes), so their own times add up to more than the run took."""

    batches: tuple[BatchResult, ...]
    interrupted: bool = False
    elapsed_s: float = 0.0  # wall clock, from the start of `run` to its summary
    left_out_note: str = ""  # batches of another target or source that this run did not touch

    @property
    def failed(self) -> int:
        return sum(b.failed + b.conflict for b in self.batches)

    @property
    def uploaded(self) -> int:
        """Files whose bytes this run sent."""
        return sum(b.uploaded for b in self.batches)

    @property
    def resolved_by_head(self) -> int:
        """Files found already in the bucket with their SHA-256: recorded, not sent again."""
        return sum(b.resolved_by_head for b in self.batches)

    @property
    def bytes_sent(self) -> int:
        return sum(b.bytes_sent for b in self.batches)

    @property
    def files_per_s(self) -> float:
        """Files uploaded per second of wall-clock time."""
        return self.uploaded / self.elapsed_s if self.elapsed_s > 0 else 0.0


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
            except BucketError as exc:
                if exc.code != "FastPutUnsupported":
                    raise
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
            except SourceError as exc:
                events.append(("attempt", "failed", {"code": exc.problem.value}))
                return self._failed(rec, attempt, exc.problem.value, exc.message, events)
            except SourceChanged as exc:
                code, message, retryable = "source_changed", str(exc), True
            except SourceUnavailable as exc:  # the media server (source = "http"): 5xx, reset
                code, message, retryable = "source_unavailable", exc.message, True
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
                return self._failed(rec, attempt, code, message, events, transient=retryable)
            delay = backoff_s(
                attempt,
                base_s=self.settings.backoff_base_s,
                max_s=self.settings.backoff_max_s,
                rng=self.rng,
            )
            self._note_retry(code, rec.object_key, delay)
            if self.stop.wait(delay):
                return self._failed(rec, attempt, code, message, events, transient=retryable)

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
                rec, attempt, "source_unavailable", exc.message, events, transient=True
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
                error_code="resolved_by_head",
                events=tuple(events),
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
        transient: bool = False,
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
            error_code=("transient:" if transient else "") + code,
            error_message=message[:2000],
            events=tuple(events),
        )


def run(
    settings: Settings,
    state: State,
    *,
    batch_id: str | None = None,
    resume: bool = False,
    max_batches: int | None = None,
    bucket: Bucket | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    processes: int | None = None,
    retry_failed: bool = True,
) -> RunSummary:
    """Run one batch (`batch_id`) or every batch with work left; resumable at any point.

    With more than one process (``processes``, else ``settings.processes``), each process runs
    ``settings.workers`` threads and all of them claim files from the same batches through the
    ledger's leases, so nothing is sent twice. `resume` is accepted for symmetry with the CLI:
    every run resumes (abandoned uploads are resolved by HEAD, and unless `retry_failed` is
    False, failed files get a new round of attempts).

    Raises Interrupted after saving state when `stop` is set or Ctrl-C arrives, and
    BucketUnavailable when the endpoint fails every request in a row.
    """
    del resume
    started = time.monotonic()
    # The batches' own target and source decide where bytes go and come from; settings that
    # name another are refused (one batch) or leave those batches out (all of them).
    left_out: Sequence[Batch] = ()
    if batch_id is not None:
        batches: Sequence[Batch] = [state.get_batch(batch_id)]
        if batches[0].status is BatchStatus.ROLLED_BACK:
            raise BatchRolledBack(
                f"Batch {batch_id} was rolled back; its files are no longer in the bucket and "
                "running it again would not bring them back under this batch."
            )
        settings = binding.settings_for_batch(settings, batches[0])
    else:
        batches, left_out = binding.split_by_binding(settings, state.batches_to_run())
        if max_batches is not None:
            batches = batches[:max_batches]
        if left_out:
            log.warning("%s", binding.left_out_note(left_out))
    check_source_reachable(settings)  # before the ledger is touched: a missing MEDIA_ROOT is exit 2
    bucket = Bucket.for_settings(settings, bucket)
    stop = stop or threading.Event()
    check_bucket(bucket, settings, stop)
    if settings.write_back:
        for label in settings.references:
            ref = catalog.parse_reference(label, id_column=settings.reference_id_column)
            catalog.ensure_write_back_columns(state.conn, ref)
    if retry_failed:
        for batch in batches:
            # Once, before any runner starts: failed files get a new round of attempts.
            state.requeue_failed(batch.batch_id)
    open_files = sum(state.open_file_count(b.batch_id) for b in batches)
    count = process_count(settings, open_files, requested=processes)
    if count > 1:
        summary = _run_processes(
            settings, state, [b.batch_id for b in batches], count, stop, on_progress
        )
        return replace(
            summary,
            elapsed_s=time.monotonic() - started,
            left_out_note=binding.left_out_note(left_out),
        )
    sender = Sender(settings, bucket, stop)
    try:
        results = send_batches(
            settings, state, [b.batch_id for b in batches], sender, stop, on_progress
        )
    finally:
        sender.close()
    if stop.is_set():
        unfinished = [r.batch_id for r in results if r.status is BatchStatus.PARTIAL]
        where = unfinished[0] if unfinished else (results[-1].batch_id if results else "")
        raise Interrupted(
            f"Interrupted during batch {where}; finished work is recorded.",
            hint=f"Resume with `r2migrate run --resume-batch {where}`.",
        )
    return RunSummary(
        tuple(results),
        elapsed_s=time.monotonic() - started,
        left_out_note=binding.left_out_note(left_out),
    )


def check_source_reachable(settings: Settings) -> None:
    """A disk source must be a readable MEDIA_ROOT before any file is claimed (exit 2)."""
    with open_media_source(settings) as media:
        media.check()


def check_bucket(bucket: Bucket, settings: Settings, stop: threading.Event) -> None:
    """The preflight HEAD bucket, retried like any request: one 503 must not abort a run."""
    retry_transient(
        bucket.check,
        settings,
        is_transient=lambda exc: isinstance(exc, BucketUnavailable),
        stop=stop,
        rng=random.Random(),
    )


AUTO_PROCESSES_MIN_FILES = 500  # below this, starting processes costs more than it saves


def process_count(settings: Settings, open_files: int, *, requested: int | None = None) -> int:
    """How many upload processes a run uses: explicit, or one per core for large runs."""
    wanted = requested if requested is not None else settings.processes
    if wanted > 0:
        return max(1, min(wanted, max(1, open_files)))
    if open_files < AUTO_PROCESSES_MIN_FILES:
        return 1
    return max(1, os.cpu_count() or 1)


def _run_processes(
    settings: Settings,
    state: State,
    batch_ids: Sequence[str],
    count: int,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None,
) -> RunSummary:
    """Spawn `count` upload processes over the same batches; the ledger's leases split the work."""
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent holds sockets and threads
    halt = ctx.Event()
    inbox: multiprocessing.queues.Queue[tuple[str, Any]] = ctx.Queue()
    children = [
        ctx.Process(
            target=_child_main,
            args=(settings, list(batch_ids), halt, inbox),
            name=f"r2migrate-upload-{i}",
        )
        for i in range(count)
    ]
    log.info("running %d batch(es) in %d processes", len(batch_ids), count)
    for child in children:
        child.start()
    messages: list[tuple[str, Any]] = []
    seen: dict[str, tuple[int, str]] = {}
    try:
        while any(c.is_alive() for c in children) or not inbox.empty():
            if stop.is_set():
                halt.set()
            with contextlib.suppress(queue.Empty):
                messages.append(inbox.get(timeout=0.5))
            if on_progress is not None:
                _poll_progress(state, batch_ids, seen, on_progress)
    except KeyboardInterrupt:
        stop.set()
        halt.set()
        log.warning("interrupted: waiting for the upload processes to record what is in flight")
        while any(c.is_alive() for c in children) or not inbox.empty():
            with contextlib.suppress(queue.Empty):
                messages.append(inbox.get(timeout=0.5))
    for child in children:
        child.join()
    per_batch: dict[str, list[BatchResult]] = {}
    errors: list[ErrorPayload] = []
    for kind, payload in messages:
        if kind == "result":
            per_batch.setdefault(payload.batch_id, []).append(payload)
        elif kind == "error":
            errors.append(payload)
    if stop.is_set():
        for bid in batch_ids:
            if (
                state.open_file_count(bid) == 0
                and state.get_batch(bid).status is BatchStatus.RUNNING
            ):
                _finalize(state, bid, [])
        raise Interrupted(
            "Interrupted; every finished upload is recorded.",
            hint="Resume with `r2migrate run` (or `--resume-batch BATCH`).",
        )
    if errors:
        raise rebuild_error(errors[0])
    # A process killed from outside leaves leased rows; finish them here, in this process.
    dead = [c for c in children if c.exitcode not in (0, None)]
    if dead:
        log.warning("%d upload process(es) died; finishing their files here", len(dead))
        sender = Sender(settings, Bucket(settings), stop)
        try:
            left = []
            for bid in batch_ids:
                state.release_dead_leases(bid)
                if state.open_file_count(bid):
                    left.append(bid)
            for result in send_batches(settings, state, left, sender, stop, on_progress):
                per_batch.setdefault(result.batch_id, []).append(result)
        finally:
            sender.close()
    if on_progress is not None:
        _poll_progress(state, batch_ids, seen, on_progress)
    return RunSummary(tuple(_merge(state, bid, per_batch.get(bid, [])) for bid in batch_ids))


def init_child_process(settings: Settings) -> None:
    """Set up a spawned upload or worker process: signals, death with its parent, logging.

    Ctrl-C reaches the parent, which tells its children to stop; a child must finish its
    in-flight PUTs, so it ignores SIGINT and SIGTERM. Its console shows warnings only.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    configure_logging(
        level=settings.log_level,
        log_file=settings.effective_log_file,
        log_format=settings.log_format,
        console_level="WARNING",
        secrets=settings.secret_values(),
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.2


def die_with_parent() -> None:
    """End this spawned process as soon as the process that started it dies (kill -9 included).

    Without this, upload processes outlive a killed `run` and go on sending its batches. The
    child ignores SIGTERM (see init_child_process), so it gets SIGKILL: what it had in flight is
    settled by HEAD at the next start, as after any crash. Linux sends the parent-death signal
    when the *thread* that started the child ends: the thread that calls `run` (or
    `run_workers`, or the API's runner) waits for its children, so in practice that is the
    death of the process. The parent may be gone before prctl takes effect, so its pid is
    checked right after; a thread polling the parent pid covers systems without prctl.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    expected = parent.pid
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the thread below only
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != expected:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch_parent() -> None:
        while os.getppid() == expected:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch_parent, name="r2m-parent-watch", daemon=True).start()


def _child_main(
    settings: Settings,
    batch_ids: list[str],
    halt: Any,
    inbox: Any,
) -> None:
    """One upload process: its own connection, client and threads; reports results, not logs."""
    init_child_process(settings)
    stop = threading.Event()

    def watch_halt() -> None:
        halt.wait()
        stop.set()

    threading.Thread(target=watch_halt, daemon=True).start()
    try:
        with State.open(settings.database_url, schema=settings.state_schema, migrate=False) as st:
            sender = Sender(settings, Bucket(settings), stop)
            try:
                for result in send_batches(settings, st, batch_ids, sender, stop, None):
                    inbox.put(("result", result))
            finally:
                sender.close()
    except ToolkitError as exc:
        inbox.put(("error", error_payload(exc)))


ErrorPayload = tuple[str, str, str, int]


def error_payload(exc: ToolkitError) -> ErrorPayload:
    """What a child process tells its parent about an error: name, message, hint, exit code."""
    return (type(exc).__name__, exc.message, exc.hint, int(exc.exit_code))


def rebuild_error(payload: ErrorPayload) -> ToolkitError:
    """The parent's copy of a child's error, with the same message, hint and exit code."""
    name, message, hint, code = payload
    kinds: dict[str, type[ToolkitError]] = {
        "BucketUnavailable": BucketUnavailable,
        "DatabaseUnavailable": DatabaseUnavailable,
        "AccessDenied": AccessDenied,
        "NoSuchBucket": NoSuchBucket,
        "BatchNotFound": BatchNotFound,
        "SourceUnavailable": SourceUnavailable,
    }
    error = kinds.get(name, ToolkitError)(message, hint=hint)
    error.exit_code = ExitCode(code)  # e.g. SourceRefused (exit 2) arrives as a ToolkitError
    return error


def _poll_progress(
    state: State,
    batch_ids: Sequence[str],
    seen: dict[str, tuple[int, str]],
    on_progress: Callable[[Progress], None],
) -> None:
    wanted = set(batch_ids)
    for b in state.list_batches():
        if b.batch_id not in wanted:
            continue
        done = b.uploaded_files + b.skipped_files
        if seen.get(b.batch_id) != (done, b.status.value):
            seen[b.batch_id] = (done, b.status.value)
            on_progress(
                Progress(
                    b.batch_id, done, b.total_files, b.uploaded_bytes, b.total_bytes, "", b.status
                )
            )


def _merge(state: State, batch_id: str, parts: Sequence[BatchResult]) -> BatchResult:
    batch = state.get_batch(batch_id)
    return BatchResult(
        batch_id=batch_id,
        status=batch.status,
        uploaded=sum(p.uploaded for p in parts),
        skipped=batch.skipped_files,
        failed=sum(p.failed for p in parts),
        conflict=sum(p.conflict for p in parts),
        resolved_by_head=sum(p.resolved_by_head for p in parts),
        bytes_sent=sum(p.bytes_sent for p in parts),
        attempts=sum(p.attempts for p in parts),
        elapsed_s=max((p.elapsed_s for p in parts), default=0.0),
        failures=tuple(f for p in parts for f in p.failures),
    )


@dataclass
class _BatchRun:
    """One batch's share of a runner's work, from its first claim to its final status."""

    batch_id: str
    started: float
    files_total: int
    bytes_total: int
    done_files: int
    done_bytes: int
    tally: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("uploaded", "failed", "conflict", "resolved", "bytes", "attempts"), 0
        )
    )
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    exhausted: bool = False  # the last claim found nothing: others may still hold files
    in_flight: int = 0
    next_check: float = 0.0  # when to look again at files that other runners hold

    def result(self, status: BatchStatus, skipped: int) -> BatchResult:
        return BatchResult(
            batch_id=self.batch_id,
            status=status,
            uploaded=self.tally["uploaded"],
            skipped=skipped,
            failed=self.tally["failed"],
            conflict=self.tally["conflict"],
            resolved_by_head=self.tally["resolved"],
            bytes_sent=self.tally["bytes"],
            attempts=self.tally["attempts"],
            elapsed_s=time.monotonic() - self.started,
            failures=tuple(self.failures),
        )


def send_batches(
    settings: Settings,
    state: State,
    batch_ids: Sequence[str],
    sender: Sender,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None,
    *,
    pool: ThreadPoolExecutor | None = None,
    owner: str | None = None,
) -> list[BatchResult]:
    """Send every open file of these batches, in order, through one pool of worker threads.

    `pool` lets several calls share one long-lived pool (a worker process running batch jobs
    side by side keeps its threads, and so their keep-alive connections); by default the call
    makes its own. `owner` is the lease owner id (a worker's names its procrastinate worker, so
    its leases end with its heartbeat); by default a new one for this process.

    Batches are pipelined: once a batch has nothing left to claim, the next one's files are
    claimed while the last uploads of the first are still in flight, so the workers never wait
    for a batch to drain. A batch gets its final status once its last file is recorded, unless
    another runner still holds some of its files: those are waited for, or taken over when the
    holder is dead (same host) or its lease has expired.
    """
    owner = owner or new_owner_id()
    pending = list(batch_ids)
    runs: dict[str, _BatchRun] = {}  # started, not yet finished
    results: list[BatchResult] = []
    claiming: _BatchRun | None = None
    unflushed: list[Outcome] = []
    in_flight: dict[Future[Outcome], FileRecord] = {}
    records: dict[int, FileRecord] = {}  # finished but not yet flushed, for write-back
    last_flush = last_renew = time.monotonic()
    transient_streak = 0
    outage: str | None = None
    outage_code = ""
    refused: SourceRefused | None = None  # 401/403 from the media server: wrong for every file
    # Claim in groups: top the window up only once it has drained to the workers' count, so a
    # claim (one round trip) takes about `workers` files instead of the one or two just finished.
    window = max(2, settings.workers * 2)
    low_water = max(1, settings.workers)
    done_queue: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()

    def begin(batch_id: str) -> _BatchRun:
        state.release_dead_leases(batch_id, stalled_worker_s=settings.stalled_worker_s)
        state.set_batch_status(batch_id, BatchStatus.RUNNING)
        current = state.refresh_counts(batch_id)
        log.info(
            "running batch %s: %d file(s), %d bytes",
            batch_id,
            current.total_files,
            current.total_bytes,
        )
        run = _BatchRun(
            batch_id=batch_id,
            started=time.monotonic(),
            files_total=current.total_files,
            bytes_total=current.total_bytes,
            done_files=current.uploaded_files + current.skipped_files,
            done_bytes=current.uploaded_bytes,
        )
        runs[batch_id] = run
        return run

    def flush() -> None:
        nonlocal last_flush
        by_batch: dict[str, list[Outcome]] = {}
        for outcome in unflushed:
            by_batch.setdefault(records[outcome.row_id].batch_id, []).append(outcome)
        for batch_id, outcomes in by_batch.items():
            state.record_outcomes(batch_id, outcomes, owner=owner)
            if settings.write_back:
                _write_back(settings, state, batch_id, outcomes, records)
        unflushed.clear()
        records.clear()
        last_flush = time.monotonic()

    def finish(run: _BatchRun, status: BatchStatus) -> None:
        del runs[run.batch_id]
        final = state.refresh_counts(run.batch_id)
        result = run.result(status, final.skipped_files)
        log.info(
            "batch %s %s: %d uploaded, %d failed, %d conflict in %.1fs",
            run.batch_id,
            status.value,
            result.uploaded,
            result.failed,
            result.conflict,
            result.elapsed_s,
            extra={"batch_id": run.batch_id, "outcome": status.value},
        )
        results.append(result)

    def settle() -> float | None:
        """Finish the batches with nothing left anywhere; for the others, which other runners
        still hold files of, return when to look again (None: no batch is waiting)."""
        now = time.monotonic()
        wake: float | None = None
        for run in [r for r in runs.values() if r.exhausted and not r.in_flight]:
            if now < run.next_check:
                wake = min(wake or run.next_check, run.next_check)
                continue
            flush()
            if state.open_file_count(run.batch_id) == 0:
                finish(run, _finalize(state, run.batch_id, run.failures))
                continue
            # Claim again at the next look: a dead holder's or an expired lease is claimable.
            state.release_dead_leases(run.batch_id, stalled_worker_s=settings.stalled_worker_s)
            run.exhausted = False
            run.next_check = now + min(1.0, settings.lease_s / 10)
        return wake

    own_pool = pool is None
    if pool is None:
        pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="r2m-put")
    try:
        while True:
            active = not stop.is_set() and outage is None
            if active and claiming is None:
                unexhausted = [r for r in runs.values() if not r.exhausted]
                if unexhausted:
                    claiming = unexhausted[0]
                elif pending:
                    claiming = begin(pending.pop(0))
            if active and claiming is not None and len(in_flight) <= low_water:
                claimed = state.claim_files(
                    claiming.batch_id,
                    owner=owner,
                    limit=window - len(in_flight),
                    lease_s=settings.lease_s,
                )
                if not claimed:
                    claiming.exhausted = True
                    claiming = None
                for rec in claimed:
                    fut = pool.submit(sender.send, rec)
                    in_flight[fut] = rec
                    runs[rec.batch_id].in_flight += 1
                    fut.add_done_callback(done_queue.put)
                if not claimed:
                    continue  # go on with the next batch at once
            if stop.is_set() or refused is not None:
                for rec in _give_back_unstarted(state, in_flight, owner):
                    runs[rec.batch_id].in_flight -= 1
            wake = settle() if active else None
            if wake is not None and not in_flight and not pending:
                if all(r.exhausted for r in runs.values()):
                    # Only files that other runners hold are left: give them time.
                    stop.wait(max(0.0, wake - time.monotonic()))
                continue
            if not in_flight and (not active or (not runs and not pending)):
                break
            for fut in collect_finished(done_queue, timeout_s=FLUSH_EVERY_S):
                if fut not in in_flight:
                    continue  # cancelled by _give_back_unstarted: already handed back
                rec = in_flight.pop(fut)
                run = runs[rec.batch_id]
                run.in_flight -= 1
                try:
                    outcome = fut.result()
                except SourceRefused as exc:
                    # Stop claiming, let the uploads in flight end, hand this file back as it
                    # was, and mark the batch partial below; then the error stops the run.
                    state.release_files([rec.id], owner=owner)
                    if refused is None:
                        refused, outage, outage_code = exc, exc.message, "refused"
                    continue
                records[rec.id] = rec
                unflushed.append(outcome)
                run.tally["attempts"] += outcome.attempts_made
                if outcome.status is FileStatus.UPLOADED:
                    transient_streak = 0
                    if outcome.error_code == "resolved_by_head":
                        run.tally["resolved"] += 1  # nothing sent: not an upload
                    else:
                        run.tally["uploaded"] += 1
                        run.tally["bytes"] += outcome.size_bytes or 0
                    run.done_files += 1
                    run.done_bytes += outcome.size_bytes or 0
                elif outcome.status is FileStatus.CONFLICT:
                    run.tally["conflict"] += 1
                    run.failures.append((rec.object_key, "conflict", outcome.error_message or ""))
                else:
                    run.tally["failed"] += 1
                    run.failures.append(
                        (rec.object_key, outcome.error_code or "", outcome.error_message or "")
                    )
                    if (outcome.error_code or "").startswith("transient:"):
                        transient_streak += 1
                        if transient_streak >= max(10, settings.workers) and outage is None:
                            outage = outcome.error_message or "every request failed"
                            outage_code = outcome.error_code or ""
                            log.error("stopping: the endpoint keeps failing (%s)", outage)
                if on_progress is not None:
                    on_progress(
                        Progress(
                            run.batch_id,
                            run.done_files,
                            run.files_total,
                            run.done_bytes,
                            run.bytes_total,
                            rec.object_key,
                            outcome.status.value,
                        )
                    )
            now = time.monotonic()
            if len(unflushed) >= FLUSH_EVERY_FILES or now - last_flush >= FLUSH_EVERY_S:
                flush()
            if now - last_renew >= settings.lease_s / 3:
                state.renew_leases(
                    [r.id for r in in_flight.values()], owner=owner, lease_s=settings.lease_s
                )
                last_renew = now
    except KeyboardInterrupt:
        # Let in-flight PUTs finish (they will not retry) so their outcome is recorded; a second
        # Ctrl-C aborts the wait, and the leases + HEAD-on-resume still keep the ledger true.
        stop.set()
        _give_back_unstarted(state, in_flight, owner)
        log.warning("interrupted: waiting for %d upload(s) in flight", len(in_flight))
        for fut, rec in list(in_flight.items()):
            try:
                unflushed.append(fut.result())
                records[rec.id] = rec
            except Exception:
                log.exception("upload of %s ended abnormally", rec.object_key)
        in_flight.clear()
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # a shared pool: cancel and wait for this call's own uploads only
            for fut in in_flight:
                fut.cancel()
            futures_wait(list(in_flight))
        flush()
        # Anything still leased by this runner has an unknown outcome (an interrupt hit between
        # a PUT and its record): expire the lease so the next run HEADs it before sending.
        for batch_id in runs:
            state.expire_leases(batch_id, owner=owner)
    for run in list(runs.values()):
        # Started but not finished: interrupted, or the endpoint is down.
        if state.open_file_count(run.batch_id) == 0:
            finish(run, _finalize(state, run.batch_id, run.failures))
            continue
        state.set_batch_status(
            run.batch_id, BatchStatus.PARTIAL, last_error=outage or "interrupted"
        )
        finish(run, BatchStatus.PARTIAL)
    if refused is not None:
        raise refused
    if outage is not None and not stop.is_set():
        unfinished = [r.batch_id for r in results if r.status is BatchStatus.PARTIAL]
        first = unfinished[0] if unfinished else batch_ids[0]
        resume = f"resume with `r2migrate run --resume-batch {first}`"
        if outage_code == "transient:source_unavailable":
            raise SourceUnavailable(
                f"Batch {first} stopped: the media server failed every recent request ({outage}).",
                hint=f"Check media_url and that the application serves it, then {resume}.",
            )
        raise BucketUnavailable(
            f"Batch {first} stopped: the S3 endpoint failed every recent request ({outage}).",
            hint=f"Check the endpoint, then {resume}.",
        )
    order = {batch_id: i for i, batch_id in enumerate(batch_ids)}
    return sorted(results, key=lambda r: order[r.batch_id])


def _give_back_unstarted(
    state: State, in_flight: dict[Future[Outcome], FileRecord], owner: str
) -> list[FileRecord]:
    """Cancel claimed files whose upload has not started and hand them back as they were."""
    unstarted = [in_flight.pop(fut) for fut in list(in_flight) if fut.cancel()]
    if unstarted:
        state.release_files([rec.id for rec in unstarted], owner=owner)
    return unstarted


def _finalize(state: State, batch_id: str, failures: Sequence[tuple[str, str, str]]) -> BatchStatus:
    """Set the batch's final status, unless another runner still holds some of its files."""
    if state.open_file_count(batch_id) > 0:
        return BatchStatus.RUNNING
    counts = state.refresh_counts(batch_id)
    ok = counts.uploaded_files + counts.skipped_files  # uploaded counts verified files too
    status = (
        BatchStatus.COMPLETED
        if ok == counts.total_files
        else BatchStatus.PARTIAL
        if ok
        else BatchStatus.FAILED
    )
    state.set_batch_status(batch_id, status, last_error=failures[0][2] if failures else None)
    return status


def _write_back(
    settings: Settings,
    state: State,
    batch_id: str,
    outcomes: Sequence[Outcome],
    records: dict[int, FileRecord],
) -> None:
    """Fill the original system's migration columns: the whole set for uploaded files, the
    status alone ('failed', 'conflict') for the others, so none keeps an earlier 'verified'."""
    others: dict[FileStatus, list[str]] = {}  # status -> file ids: one UPDATE per table each
    for o in outcomes:
        rec = records.get(o.row_id)
        if rec is None:
            continue
        if o.status is not FileStatus.UPLOADED:
            others.setdefault(o.status, []).extend(rec.source_refs or (rec.file_id,))
            continue
        by_ref = catalog.source_ids_by_reference(rec.source_refs or (rec.file_id,))
        for ref_label, ids in by_ref.items():
            ref = catalog.parse_reference(ref_label, id_column=settings.reference_id_column)
            catalog.write_back(
                state.conn,
                ref,
                ids,
                object_key=rec.object_key,
                status=FileStatus.UPLOADED.value,
                batch_id=batch_id,
                sha256_hex=o.source_sha256,
                migrated_at=datetime.now(UTC),
            )
    for status, file_ids in others.items():
        catalog.write_back_status_of(
            state.conn,
            file_ids,
            status=status.value,
            batch_id=batch_id,
            id_column=settings.reference_id_column,
        )
