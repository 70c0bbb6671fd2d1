"""Stage 4: prove each uploaded object is intact: cheap (HEAD + source stat) or deep (GET + hash).

Must never modify an object or a source file; it reads both and writes only the ledger (row status,
`verified_at`, 'verify' events) and, with ``write_back``, the application's migration columns.

What is checked, per ledger row of the chosen batches (rows rolled back are history and skipped):

* rows in a done status (`uploaded`, `skipped`, `verified`) are expected to exist. Cheap: one HEAD
  compares size, the ``sha256`` metadata and the server's own ChecksumSHA256 (when it reports
  one for a single-part object) with the ledger, and the source is re-stat-ed (size, mtime) to
  notice a file edited after upload. When the ETag differs from the one recorded at upload while
  everything else agrees, the object was rewritten behind our back: that file is deep-checked on
  the spot rather than trusted. Deep (``deep=True``, or ``sample=N`` files): also GET the object
  and re-hash it, and re-hash the source; equal content then wins over a changed mtime.
* rows not (yet) uploaded (`pending`, `uploading`, `failed`, `conflict`) cost no request and are
  reported as ``not_uploaded`` with their status: the batch is not proven, so ``ok`` is False.
* ``extra``: objects under the batch's key space that no live ledger row names. The key space is
  the longest common directory prefix of the batch's keys (cut after the last '/'), so it always
  lies inside ``location``; with keys spread over the whole bucket it is the whole bucket. Listed
  keys are looked up against *every* batch's live keys, a page at a time (bounded memory).

Outcome precedence for one file: error > missing > differ > source_changed > match. Matched rows
become `verified`; a `verified` row that fails falls back to `uploaded`/`skipped` with error code
``verify:<outcome>``; an ``error`` (the check could not be made) changes no row. A HEAD or GET
that fails transiently (503, SlowDown, a reset) is tried again with backoff, up to
``max_attempts``, before its file becomes an ``error``. Every check is an event (kind 'verify')
so a report can say when each file was last proven intact.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from r2migrate.errors import (
    BucketError,
    ConfigError,
    ExitCode,
    Interrupted,
    SourceError,
    SourceUnavailable,
)
from r2migrate.media.base import FileStat, MediaSource, open_media_source
from r2migrate.rules import binding
from r2migrate.rules.pricing import CLASS_A_USD_PER_MILLION, CLASS_B_USD_PER_MILLION
from r2migrate.runtime.pool import drain
from r2migrate.runtime.retry import Requests
from r2migrate.s3.bucket import Bucket, ObjectInfo, sha256_b64
from r2migrate.settings.config import Settings
from r2migrate.store import catalog
from r2migrate.store.ledger import DONE_STATUSES, Batch, FileRecord, FileStatus, State

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.5  # ledger writes are grouped: one transaction per flush, not per file
FLUSH_EVERY_FILES = 64


class VerifyOutcome(StrEnum):
    MATCH = "match"  # the object (and the source) are what the ledger says
    DIFFER = "differ"  # the object's size, SHA-256 or content is not the ledger's
    MISSING = "missing"  # no object at the key
    EXTRA = "extra"  # an object under the batch's key space that no ledger row names
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
class VerifyProgress:
    files_done: int
    files_total: int
    last_key: str
    last_outcome: str


@dataclass(frozen=True)
class VerifySummary:
    """What verify found. ``counts`` has every outcome (zeros included); ``problems`` lists each
    file that is not a match. Requests are counted as sent, so the R2 bill is exact."""

    batch_ids: tuple[str, ...]
    deep: bool
    sample: int | None
    sample_seed: int | None
    counts: Mapping[str, int]
    files_checked: int  # ledger rows looked at (extras not included)
    deep_checked: int  # objects read back and hashed (deep, sampled, or rewritten)
    bytes_proven: int  # bytes of the files that matched
    bytes_read: int  # bytes streamed back by deep checks
    head_requests: int
    get_requests: int
    list_requests: int
    key_prefixes: tuple[str, ...]  # where extras were looked for
    elapsed_s: float
    problems: tuple[FileCheck, ...] = field(default=())
    aborted: str | None = None  # set when the endpoint failed so often that checking stopped
    left_out_batches: int = 0  # --all: batches of another target or source, not touched
    left_out_note: str = ""  # one sentence saying which, for every front end

    @property
    def ok(self) -> bool:
        """True only when every file matched and nothing extra or unchecked was found."""
        return self.aborted is None and all(
            n == 0 for outcome, n in self.counts.items() if outcome != VerifyOutcome.MATCH
        )

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.FILES_FAILED

    @property
    def class_b_ops(self) -> int:
        return self.head_requests + self.get_requests

    @property
    def class_b_cost_usd(self) -> float:
        return self.class_b_ops * CLASS_B_USD_PER_MILLION / 1e6

    @property
    def class_a_ops(self) -> int:
        return self.list_requests

    @property
    def class_a_cost_usd(self) -> float:
        return self.class_a_ops * CLASS_A_USD_PER_MILLION / 1e6


@dataclass(frozen=True)
class _Checked:
    check: FileCheck
    heads: int = 0
    gets: int = 0
    bytes_read: int = 0
    transient: bool = False  # an endpoint failure worth counting towards an outage


class _Checker:
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

    def check(self, rec: FileRecord, deep: bool) -> _Checked:
        ask = Requests(self.settings, self.stop, self.rng)
        read = 0

        def done(
            outcome: VerifyOutcome,
            reason: str = "",
            *,
            etag: str | None = None,
            transient: bool = False,
        ) -> _Checked:
            gets = ask.sent["GET"]
            return _Checked(
                _file_check(rec, outcome, reason, deep=gets > 0, etag=etag),
                ask.sent["HEAD"],
                gets,
                read,
                transient,
            )

        expected = rec.object_sha256 or rec.source_sha256
        if expected is None:
            return done(VerifyOutcome.ERROR, "the ledger holds no SHA-256 for this file")
        try:
            info = ask("HEAD", lambda: self.bucket.head(rec.object_key))
        except BucketError as exc:
            return done(VerifyOutcome.ERROR, ask.why(exc), transient=exc.retryable)
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
                return done(VerifyOutcome.ERROR, ask.why(exc), transient=exc.retryable)
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
            return done(VerifyOutcome.ERROR, exc.message, etag=info.etag, transient=True)
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


def _file_check(
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


def key_space(keys: Sequence[str]) -> str:
    """The longest common directory prefix of `keys` ('' = the whole bucket).

    Keys are compared as strings, not as paths: S3 keys may hold '//' or end in '/', and the
    prefix must be a LIST prefix, byte for byte.
    """
    if not keys:
        return ""
    first, last = min(keys), max(keys)  # the common prefix of all is that of these two
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    common = first[:length]
    return common[: common.rfind("/") + 1]


def verify(
    settings: Settings,
    state: State,
    *,
    batch_id: str | None = None,
    all_batches: bool = False,
    deep: bool = False,
    sample: int | None = None,
    seed: int | None = None,
    on_progress: Callable[[VerifyProgress], None] | None = None,
    bucket: Bucket | None = None,
) -> VerifySummary:
    """Check one batch (`batch_id`) or every batch (`all_batches`) against the bucket and disk.

    ``deep`` reads every object back; ``sample=N`` reads back N files picked at random (the
    rest get the cheap check) with ``seed`` (random when None; reported as ``sample_seed``).
    Per-file trouble is data in the summary; raises only for whole-run failures: ConfigError
    (arguments, media_root), BatchNotFound, and NoSuchBucket/AccessDenied/BucketUnavailable when
    the bucket cannot be used at all at the start. An endpoint that fails mid-way gives ``error``
    outcomes and ``aborted``, never an exception.
    """
    if (batch_id is None) == (not all_batches):
        raise ConfigError(
            "Say which batch to verify: a batch id, or all batches.",
            hint="`r2migrate verify BATCH` or `r2migrate verify --all`.",
        )
    if sample is not None and (sample < 0 or deep):
        raise ConfigError(
            "sample must be a number of files (0 or more), and cannot be combined with deep"
            " (deep already reads back every file).",
            hint="Use `--deep` for every file or `--sample N` for N of them.",
        )
    started = time.monotonic()
    # Verify acts on the batches' own target and source (even a cheap check stats the source).
    left_out: list[Batch] = []
    if batch_id is not None:
        batches: list[Batch] = [state.get_batch(batch_id)]
        settings = binding.settings_for_batch(settings, batches[0])
    else:
        batches, left_out = binding.split_by_binding(settings, state.list_batches())
    media = open_media_source(settings)
    media.require_configured()
    rows = [
        rec
        for b in batches
        for rec in state.batch_files(b.batch_id)
        if rec.status is not FileStatus.ROLLED_BACK
    ]
    checkable = [rec for rec in rows if rec.status in DONE_STATUSES]
    deep_ids: set[int] = {rec.id for rec in checkable} if deep else set()
    sample_seed: int | None = None
    if sample:
        sample_seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        picked = random.Random(sample_seed).sample(checkable, min(sample, len(checkable)))
        deep_ids = {rec.id for rec in picked}
    bucket = Bucket.for_settings(settings, bucket)
    stop = threading.Event()  # set on an outage or Ctrl-C: checks waiting to retry give up
    ask = Requests(settings, stop, random.Random())  # this thread's own requests
    ask("HEAD bucket", bucket.check)  # one 503 must not stop the whole verify
    if settings.write_back:
        for label in settings.references:
            catalog.ensure_write_back_columns(
                state.conn, catalog.parse_reference(label, id_column=settings.reference_id_column)
            )

    tally = _Tally(settings, state, on_progress, files_total=len(rows))
    by_id = {rec.id: rec for rec in rows}
    for rec in rows:
        if rec.status not in DONE_STATUSES:
            tally.add(
                _Checked(
                    _file_check(
                        rec,
                        VerifyOutcome.NOT_UPLOADED,
                        f"status {rec.status.value}"
                        + (f" ({rec.error_code})" if rec.error_code else ""),
                    )
                ),
                rec,
            )
    checker = _Checker(bucket, media, settings, stop)
    try:
        unchecked = drain(
            lambda rec: checker.check(rec, rec.id in deep_ids),
            checkable,
            tally,
            workers=settings.workers,
            stop=stop,
            thread_name="r2m-verify",
            poll_s=FLUSH_EVERY_S,
        )
        for rec in unchecked:  # only left when the endpoint kept failing
            tally.add(
                _Checked(_file_check(rec, VerifyOutcome.ERROR, f"not checked: {tally.aborted}")),
                rec,
            )
    except KeyboardInterrupt as exc:
        raise Interrupted(
            "Verify interrupted; the checks finished so far are recorded.",
            hint="Run verify again; it starts over and costs one request per file.",
        ) from exc
    finally:
        tally.flush()
        media.close()

    prefixes: list[str] = []
    if tally.aborted is None:
        prefixes = _find_extras(
            state, binding.target_of(settings), bucket, batches, by_id, tally, ask
        )
        tally.flush()
    counts = {o.value: tally.counts.get(o.value, 0) for o in VerifyOutcome}
    log.info(
        "verified %d file(s) of %d batch(es): %s",
        len(rows),
        len(batches),
        ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        extra={"outcome": "verify"},
    )
    return VerifySummary(
        batch_ids=tuple(b.batch_id for b in batches),
        deep=deep,
        sample=sample,
        sample_seed=sample_seed,
        counts=counts,
        files_checked=len(rows),
        deep_checked=tally.deep_checked,
        bytes_proven=tally.bytes_proven,
        bytes_read=tally.bytes_read,
        head_requests=tally.heads,
        get_requests=tally.gets,
        list_requests=tally.lists,
        key_prefixes=tuple(prefixes),
        elapsed_s=time.monotonic() - started,
        problems=tuple(tally.problems),
        aborted=tally.aborted,
        left_out_batches=len(left_out),
        left_out_note=binding.left_out_note(left_out),
    )


class _Tally:
    """Tallies results in the calling thread and writes them to the ledger in groups."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        on_progress: Callable[[VerifyProgress], None] | None,
        *,
        files_total: int,
    ) -> None:
        self.settings = settings
        self.state = state
        self.on_progress = on_progress
        self.files_total = files_total
        self.files_done = 0
        self.counts: Counter[str] = Counter()
        self.problems: list[FileCheck] = []
        self.heads = self.gets = self.lists = 0
        self.deep_checked = self.bytes_proven = self.bytes_read = 0
        self.aborted: str | None = None
        self._streak = 0
        self._unflushed: list[tuple[FileCheck, FileRecord | None]] = []
        self._last_flush = time.monotonic()

    def add(self, checked: _Checked, rec: FileRecord | None) -> None:
        check = checked.check
        self.counts[check.outcome.value] += 1
        self.heads += checked.heads
        self.gets += checked.gets
        self.bytes_read += checked.bytes_read
        self.deep_checked += 1 if check.deep else 0
        if check.outcome is VerifyOutcome.MATCH:
            self.bytes_proven += check.size_bytes
        else:
            self.problems.append(check)
        if checked.transient:
            self._streak += 1
            if self._streak >= max(10, self.settings.workers) and self.aborted is None:
                self.aborted = (
                    f"the endpoint failed for {self._streak} files in a row"
                    f" (each tried up to {self.settings.max_attempts} times)"
                )
                log.error("verify stopped: %s (last: %s)", self.aborted, check.reason)
        elif checked.heads or checked.gets:
            self._streak = 0
        self._unflushed.append((check, rec))
        if rec is not None:
            self.files_done += 1
            if self.on_progress is not None:
                self.on_progress(
                    VerifyProgress(
                        self.files_done, self.files_total, check.object_key, check.outcome.value
                    )
                )

    def maybe_flush(self) -> None:
        if (
            len(self._unflushed) >= FLUSH_EVERY_FILES
            or time.monotonic() - self._last_flush >= FLUSH_EVERY_S
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._unflushed:
            return
        groups: dict[str, list[tuple[FileCheck, FileRecord | None]]] = {}
        for check, rec in self._unflushed:
            groups.setdefault(check.batch_id, []).append((check, rec))
        self._unflushed = []
        for batch_id, items in groups.items():
            proven: list[tuple[int, str | None]] = []
            disproven: list[tuple[int, str, str]] = []
            events: list[tuple[int | None, str, Mapping[str, Any]]] = []
            matched: list[FileRecord] = []
            failed: list[FileRecord] = []
            for check, rec in items:
                events.append((check.row_id, check.outcome.value, _event_detail(check)))
                if rec is None or check.row_id is None:
                    continue
                if check.outcome is VerifyOutcome.MATCH:
                    proven.append((check.row_id, check.etag))
                    matched.append(rec)
                elif check.outcome in (
                    VerifyOutcome.DIFFER,
                    VerifyOutcome.MISSING,
                    VerifyOutcome.SOURCE_CHANGED,
                ):
                    disproven.append((check.row_id, f"verify:{check.outcome.value}", check.reason))
                    failed.append(rec)
            self.state.record_verification(
                batch_id, proven=proven, disproven=disproven, events=events
            )
            if self.settings.write_back:
                _write_back(self.settings, self.state, batch_id, matched)
                _write_back_failed(self.settings, self.state, batch_id, failed)


def _event_detail(check: FileCheck) -> dict[str, Any]:
    detail: dict[str, Any] = {"key": check.object_key, "mode": "deep" if check.deep else "cheap"}
    if check.reason:
        detail["reason"] = check.reason
    if check.etag:
        detail["etag"] = check.etag
    return detail


def _find_extras(
    state: State,
    target: binding.Target,
    bucket: Bucket,
    batches: Sequence[Batch],
    rows_by_id: Mapping[int, FileRecord],
    tally: _Tally,
    ask: Requests,
) -> list[str]:
    """List each batch's key space once and report objects no live ledger row names.

    A page whose LIST fails transiently is asked again (same continuation token) through `ask`.
    """
    keys_by_batch: dict[str, list[str]] = {}
    for rec in rows_by_id.values():
        keys_by_batch.setdefault(rec.batch_id, []).append(rec.object_key)
    spaces: dict[str, str] = {}  # prefix -> the batch its extras are recorded under
    for b in batches:
        keys = keys_by_batch.get(b.batch_id)
        if keys:
            spaces.setdefault(key_space(keys), b.batch_id)
    kept: list[str] = []
    for prefix in sorted(spaces):  # a prefix inside a listed one adds nothing
        if not any(prefix.startswith(k) for k in kept):
            kept.append(prefix)
    for prefix in kept:
        owner = spaces[prefix]
        token: str | None = None
        try:
            while True:
                page, token = ask("LIST", functools.partial(bucket.list_page, prefix, token))
                known = state.known_object_keys(target, [key for key, _ in page])
                for key, size in page:
                    if key not in known:
                        tally.add(
                            _Checked(
                                FileCheck(
                                    batch_id=owner,
                                    object_key=key,
                                    outcome=VerifyOutcome.EXTRA,
                                    reason=f"under {prefix or 'the bucket root'!r} but in no batch",
                                    size_bytes=size,
                                )
                            ),
                            None,
                        )
                tally.maybe_flush()
                if token is None:
                    break
        except BucketError as exc:
            tally.add(
                _Checked(
                    FileCheck(
                        batch_id=owner,
                        object_key=prefix,
                        outcome=VerifyOutcome.ERROR,
                        reason=f"listing for extra objects failed: {ask.why(exc)}",
                    )
                ),
                None,
            )
    tally.lists += ask.sent["LIST"]
    return kept


def _write_back(
    settings: Settings, state: State, batch_id: str, records: Sequence[FileRecord]
) -> None:
    """Fill the migration columns of the application rows whose files matched.

    ``migration_status`` becomes 'verified', ``r2_key`` the object key, ``checksum`` the SHA-256,
    ``migrated_at`` the upload time and ``migration_batch_id`` the batch: one UPDATE per
    referencing table for the whole flush.
    """
    now = datetime.now(UTC)
    by_ref: dict[str, list[catalog.WriteBackRow]] = {}
    for rec in records:
        for file_id in rec.source_refs or (rec.file_id,):
            ref_label, _, source_id = file_id.rpartition(":")
            by_ref.setdefault(ref_label, []).append(
                catalog.WriteBackRow(
                    source_id=source_id,
                    object_key=rec.object_key,
                    sha256_hex=rec.source_sha256 or rec.object_sha256,
                    migrated_at=rec.uploaded_at or now,
                )
            )
    for ref_label, rows in by_ref.items():
        catalog.write_back_rows(
            state.conn,
            catalog.parse_reference(ref_label, id_column=settings.reference_id_column),
            rows,
            status=FileStatus.VERIFIED.value,
            batch_id=batch_id,
        )


def _write_back_failed(
    settings: Settings, state: State, batch_id: str, records: Sequence[FileRecord]
) -> None:
    """A file verify disproved (missing, differ, source changed) is 'failed' in the
    application's table: it must never keep an earlier 'verified' (repair: `run --repair`)."""
    catalog.write_back_status_of(
        state.conn,
        [file_id for rec in records for file_id in (rec.source_refs or (rec.file_id,))],
        status=FileStatus.FAILED.value,
        batch_id=batch_id,
        id_column=settings.reference_id_column,
    )
