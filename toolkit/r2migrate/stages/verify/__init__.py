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

Each extra object is HEADed once: one without r2migrate's metadata written after the migration
began is ``app_written`` (the site at work after the switch: counted, never a failure; see
``rules/provenance.py``); the rest stay ``extra``.

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
from datetime import datetime
from typing import Any

from r2migrate.errors import (
    BucketError,
    ConfigError,
    ExitCode,
    Interrupted,
    split_error_code,
)
from r2migrate.media.base import open_media_source
from r2migrate.rules import binding, provenance
from r2migrate.rules.pricing import CLASS_A_USD_PER_MILLION, CLASS_B_USD_PER_MILLION
from r2migrate.runtime.pool import drain
from r2migrate.runtime.retry import Requests
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.recorder import (
    FLUSH_EVERY_S,
    FailureStreak,
    GroupedWrites,
    ensure_write_back_columns,
    write_back_done,
    write_back_status,
)
from r2migrate.stages.verify.checks import (
    Checked,
    Checker,
    FileCheck,
    VerifyOutcome,
    _same_mtime,
    file_check,
)
from r2migrate.store.ledger import DONE_STATUSES, Batch, FileRecord, FileStatus, State

__all__ = [
    "CLASS_A_USD_PER_MILLION",
    "CLASS_B_USD_PER_MILLION",
    "FileCheck",
    "StageProgress",
    "VerifyOutcome",
    "VerifyProgress",
    "VerifySummary",
    "_same_mtime",
    "key_space",
    "verify",
]

log = logging.getLogger(__name__)


VerifyProgress = StageProgress  # the former name of verify's progress


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
    app_written: tuple[FileCheck, ...] = ()  # the first objects the application wrote

    @property
    def ok(self) -> bool:
        """True only when every file matched and nothing extra or unchecked was found
        (objects the application wrote after the switch are not the migration's: they count
        apart and never fail it)."""
        fine = (VerifyOutcome.MATCH, VerifyOutcome.APP_WRITTEN)
        return self.aborted is None and all(
            n == 0 for outcome, n in self.counts.items() if outcome not in fine
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
    on_progress: Callable[[StageProgress], None] | None = None,
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
    _check_arguments(batch_id, all_batches, deep, sample)
    started = time.monotonic()
    settings, batches, left_out = _batches_to_verify(settings, state, batch_id)
    rows = [
        rec
        for b in batches
        for rec in state.batch_files(b.batch_id)
        if rec.status is not FileStatus.ROLLED_BACK
    ]
    checkable = [rec for rec in rows if rec.status in DONE_STATUSES]
    deep_ids, sample_seed = _pick_deep(checkable, deep, sample, seed)
    bucket = Bucket.for_settings(settings, bucket)
    stop = threading.Event()  # set on an outage or Ctrl-C: checks waiting to retry give up
    ask = Requests(settings, stop, random.Random())  # this thread's own requests
    ask("HEAD bucket", bucket.check)  # one 503 must not stop the whole verify
    if settings.write_back:
        ensure_write_back_columns(settings, state)
    tally = _Tally(settings, state, on_progress, files_total=len(rows))
    for rec in rows:
        if rec.status not in DONE_STATUSES:
            code, _ = split_error_code(rec.error_code)  # older rows: 'transient:<code>'
            why = f"status {rec.status.value}" + (f" ({code})" if code else "")
            tally.add(Checked(file_check(rec, VerifyOutcome.NOT_UPLOADED, why)), rec)
    _check_all(settings, bucket, stop, tally, checkable, deep_ids)
    prefixes: list[str] = []
    if tally.aborted is None:
        by_id = {rec.id: rec for rec in rows}
        target = binding.target_of(settings)
        prefixes = _find_extras(state, target, bucket, batches, by_id, tally, ask)
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
        app_written=tuple(tally.app_written),
    )


def _check_arguments(
    batch_id: str | None, all_batches: bool, deep: bool, sample: int | None
) -> None:
    if (batch_id is None) == (not all_batches):
        raise ConfigError(
            "Say which batch to verify: a batch id, or all batches.",
            hint="`r2migrate verify --batch BATCH` or `r2migrate verify --all`.",
        )
    if sample is not None and (sample < 0 or deep):
        raise ConfigError(
            "sample must be a number of files (0 or more), and cannot be combined with deep"
            " (deep already reads back every file).",
            hint="Use `--deep` for every file or `--sample N` for N of them.",
        )


def _batches_to_verify(
    settings: Settings, state: State, batch_id: str | None
) -> tuple[Settings, list[Batch], list[Batch]]:
    """The batches to check, the settings bound to them, and the batches left out.

    Verify acts on the batches' own target and source (even a cheap check stats the source).
    """
    left_out: list[Batch] = []
    if batch_id is not None:
        batches: list[Batch] = [state.get_batch(batch_id)]
        settings = binding.settings_for_batch(settings, batches[0])
    else:
        batches, left_out = binding.split_by_binding(settings, state.list_batches())
    open_media_source(settings).require_configured()
    return settings, batches, left_out


def _pick_deep(
    checkable: Sequence[FileRecord], deep: bool, sample: int | None, seed: int | None
) -> tuple[set[int], int | None]:
    """The rows whose objects are read back, and the sample's seed (None: no sample)."""
    if not sample:
        return ({rec.id for rec in checkable} if deep else set()), None
    sample_seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    picked = random.Random(sample_seed).sample(list(checkable), min(sample, len(checkable)))
    return {rec.id for rec in picked}, sample_seed


def _check_all(
    settings: Settings,
    bucket: Bucket,
    stop: threading.Event,
    tally: _Tally,
    checkable: Sequence[FileRecord],
    deep_ids: set[int],
) -> None:
    """Check every uploaded row in the worker threads; each result reaches ``tally`` here."""
    media = open_media_source(settings)  # MEDIA_ROOT or the application's MEDIA_URL
    checker = Checker(bucket, media, settings, stop)
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
                Checked(file_check(rec, VerifyOutcome.ERROR, f"not checked: {tally.aborted}")),
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


class _Tally:
    """Tallies results in the calling thread and writes them to the ledger in groups."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        on_progress: Callable[[StageProgress], None] | None,
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
        self.app_written: list[FileCheck] = []  # examples only (the count is in ``counts``)
        self.heads = self.gets = self.lists = 0
        self.deep_checked = self.bytes_proven = self.bytes_read = 0
        self.aborted: str | None = None
        self._streak = FailureStreak(settings.workers)
        self._writes = GroupedWrites[tuple[FileCheck, FileRecord | None]](self._write)

    def add(self, checked: Checked, rec: FileRecord | None) -> None:
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
        if checked.retryable:
            if self._streak.failed() and self.aborted is None:
                self.aborted = (
                    f"the endpoint failed for {self._streak.count} files in a row"
                    f" (each tried up to {self.settings.max_attempts} times)"
                )
                log.error("verify stopped: %s (last: %s)", self.aborted, check.reason)
        elif checked.heads or checked.gets:
            self._streak.reset()
        self._writes.add((check, rec))
        if rec is not None:
            self.files_done += 1
            if self.on_progress is not None:
                self.on_progress(
                    StageProgress(
                        check.batch_id,
                        self.files_done,
                        self.files_total,
                        last_key=check.object_key,
                        last_status=check.outcome.value,
                        stage="verify",
                    )
                )

    def maybe_flush(self) -> None:
        self._writes.maybe_flush()

    def flush(self) -> None:
        self._writes.flush()

    def _write(self, done: list[tuple[FileCheck, FileRecord | None]]) -> None:
        groups: dict[str, list[tuple[FileCheck, FileRecord | None]]] = {}
        for check, rec in done:
            groups.setdefault(check.batch_id, []).append((check, rec))
        for batch_id, items in groups.items():
            proven: list[tuple[int, str | None]] = []
            disproven: list[tuple[int, str, str]] = []
            events: list[tuple[int | None, str, Mapping[str, Any]]] = []
            matched: list[tuple[FileRecord, str | None, datetime | None]] = []
            failed: list[FileRecord] = []
            for check, rec in items:
                events.append((check.row_id, check.outcome.value, _event_detail(check)))
                if rec is None or check.row_id is None:
                    continue
                if check.outcome is VerifyOutcome.MATCH:
                    proven.append((check.row_id, check.etag))
                    matched.append((rec, rec.source_sha256 or rec.object_sha256, rec.uploaded_at))
                elif check.outcome in _DISPROVEN:
                    disproven.append((check.row_id, f"verify:{check.outcome.value}", check.reason))
                    failed.append(rec)
            self.state.record_verification(
                batch_id, proven=proven, disproven=disproven, events=events
            )
            if self.settings.write_back:
                # 'verified' with every column; a disproven file is 'failed' in the
                # application's table: it must never keep an earlier 'verified'.
                write_back_done(self.settings, self.state, batch_id, matched, FileStatus.VERIFIED)
                write_back_status(self.settings, self.state, batch_id, failed, FileStatus.FAILED)


_DISPROVEN = (VerifyOutcome.DIFFER, VerifyOutcome.MISSING, VerifyOutcome.SOURCE_CHANGED)


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
    since = min((b.started_at or b.created_at for b in batches), default=None)
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
                        _add_extra(bucket, ask, tally, owner, key, size, since)
                tally.maybe_flush()
                if token is None:
                    break
        except BucketError as exc:
            tally.add(
                Checked(
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
    tally.heads += ask.sent["HEAD"]
    return kept


def _add_extra(
    bucket: Bucket,
    ask: Requests,
    tally: _Tally,
    owner: str,
    key: str,
    size: int,
    since: datetime | None,
) -> None:
    """One HEAD says who wrote an object no batch names: the application (counted, no event,
    a few kept as examples) or not (``extra``, recorded as before)."""
    try:
        info = ask("HEAD", functools.partial(bucket.head, key))
    except BucketError as exc:
        check = FileCheck(owner, key, VerifyOutcome.ERROR, f"who wrote it: {ask.why(exc)}")
        tally.add(Checked(check, retryable=exc.retryable), None)
        return
    if info is None:  # deleted since the LIST
        return
    origin = provenance.classify_extra(
        sha256_metadata=info.sha256_hex,
        last_modified=info.last_modified,
        migration_started_at=since,
    )
    outcome = VerifyOutcome.APP_WRITTEN if origin.app_written else VerifyOutcome.EXTRA
    check = FileCheck(owner, key, outcome, origin.reason, size_bytes=size, etag=info.etag)
    if origin.app_written:
        tally.counts[outcome.value] += 1
        if len(tally.app_written) < 20:
            tally.app_written.append(check)
    else:
        tally.add(Checked(check), None)
