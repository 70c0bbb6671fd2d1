"""The cutover check: will every row Django serves today still be served after the switch?

Must never write to the bucket or the application's tables: it reads every reference row (every
discovered FileField, or every configured ``references`` column), the disk, and asks the storage
exactly what the application will ask (``exists``, ``size``, ``open``); it records only one
``cutover`` event per batch of the storage's target in the toolkit's own history.

Each row gets one verdict:

- ``works``: served today (its file is on disk) and by the storage after the switch: the object
  at the key django-storages computes exists, has the file's size and the Content-Type and
  Content-Encoding ``_get_write_parameters`` would set; with ``deep`` its bytes read through
  ``storage.open()`` hash like the file's;
- ``will_break``: served today, not after: ``no_object`` (with the inventory's refusal codes
  when r2migrate refused the file, e.g. ``unicode_collision``), ``object_differs`` (size, type,
  encoding or, deep, content), ``refused_by_storage`` (django-storages raises
  SuspiciousOperation), or ``error`` (run the check again);
- ``broken_today``: the row names no file on disk (missing, a folder, a symlink out, ...) and
  the storage holds no object for it: it does not work today either, so it does not fail the
  check;
- ``in_bucket_only``: no file on disk, but the storage holds an object at its key: a file the
  site wrote after the switch (or put there otherwise); served after the switch, never a failure;
- ``no_file``: NULL or empty name.

The check fails (exit 1) when any row would break. Rows stream from the application's tables
and are checked ``workers`` at a time in a bounded window; only the first ``max_items`` rows that
need attention are kept (all are counted), so memory stays flat whatever the number of rows.
The one exception is the Unicode-collision pass, which holds each distinct name once (as
inventory does).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from r2migrate.django.render import table
from r2migrate.django.storage_options import StorageOptions, check_storage_options
from r2migrate.errors import BucketError, ConfigError, Problem, SourceError
from r2migrate.media import disk as source
from r2migrate.rules import binding
from r2migrate.s3.bucket import translate_error
from r2migrate.settings.config import Settings
from r2migrate.stages.inventory import examine_reference, unicode_collisions
from r2migrate.store import catalog
from r2migrate.store.ledger import Batch, BatchStatus, MediaFile, State, connect

__all__ = [
    "CutoverItem",
    "CutoverProblem",
    "CutoverSummary",
    "Verdict",
    "cutover_check",
    "format_report",
    "live_batches",
    "storage_from_settings",
]

_READ_CHUNK_BYTES = 1 << 20


class Verdict(StrEnum):
    WORKS = "works"  # served today and after the switch
    WILL_BREAK = "will_break"  # served today, not after the switch: fails the check
    BROKEN_TODAY = "broken_today"  # no file on disk: not served today either
    IN_BUCKET_ONLY = "in_bucket_only"  # no file on disk, but the bucket holds it: served after
    NO_FILE = "no_file"  # NULL or empty name


class CutoverProblem(StrEnum):
    NO_OBJECT = "no_object"  # storage.exists(name) is False
    SIZE_DIFFERS = "size_differs"  # storage.size(name) is not the file's size
    CONTENT_DIFFERS = "content_differs"  # deep: SHA-256 of storage.open(name) differs
    CONTENT_TYPE_DIFFERS = "content_type_differs"  # HEAD vs what django-storages would set
    CONTENT_ENCODING_DIFFERS = "content_encoding_differs"
    REFUSED_BY_STORAGE = "refused_by_storage"  # django-storages refuses the name
    ERROR = "error"  # a request failed; run the check again
    NOT_ON_DISK = "not_on_disk"  # broken today: no file Django could serve


CUTOVER_MEANINGS = {
    CutoverProblem.NO_OBJECT.value: "the bucket holds no object at the key the row will ask for",
    CutoverProblem.SIZE_DIFFERS.value: "the object's size is not the file's",
    CutoverProblem.CONTENT_DIFFERS.value: "the object's bytes are not the file's",
    CutoverProblem.CONTENT_TYPE_DIFFERS.value: "the object would be served with another type",
    CutoverProblem.CONTENT_ENCODING_DIFFERS.value: "the object would be served with another "
    "Content-Encoding",
    CutoverProblem.REFUSED_BY_STORAGE.value: "django-storages refuses the name",
    CutoverProblem.ERROR.value: "the storage could not be asked; run the check again",
    CutoverProblem.NOT_ON_DISK.value: "no file on disk: the row is broken today already",
}


@dataclass(frozen=True)
class CutoverItem:
    """One reference row (``table.column:id``) that does not simply work."""

    file_id: str
    name: str
    verdict: Verdict
    storage_key: str | None  # the key django-storages resolves ``name`` to (None: refused)
    problems: tuple[str, ...]  # CutoverProblem values
    reasons: tuple[str, ...] = ()  # inventory problem codes (why r2migrate refused the file)
    detail: str = ""

    @property
    def blocking(self) -> bool:
        return self.verdict is Verdict.WILL_BREAK


@dataclass(frozen=True)
class CutoverSummary:
    storage_class: str
    bucket_name: str
    location: str
    custom_domain: str | None
    deep: bool
    batch_ids: tuple[str, ...]
    references_checked: int
    verdicts: dict[str, int]
    problems: dict[str, int]
    reasons: dict[str, int]  # inventory codes of the rows that will break
    bytes_read: int  # deep reads
    gzip_served: int  # objects served with a Content-Encoding (clients decode them)
    warnings: tuple[str, ...] = ()
    items: tuple[CutoverItem, ...] = field(default=())  # the first rows needing attention
    option_failures: tuple[str, ...] = ()  # storage options that break the site after the switch
    options_shown: tuple[tuple[str, str], ...] = ()  # (option, value) of the options checked

    @property
    def references_ok(self) -> int:
        return self.verdicts.get(Verdict.WORKS.value, 0)

    @property
    def failed(self) -> int:
        return self.verdicts.get(Verdict.WILL_BREAK.value, 0)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and not self.option_failures


@dataclass(frozen=True)
class _Result:
    file_id: str
    name: str | None
    verdict: Verdict
    storage_key: str | None = None
    problems: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    detail: str = ""
    gzip: bool = False
    bytes_read: int = 0


def storage_from_settings(settings: Settings) -> Any:
    """An ``S3Storage`` built from r2migrate's ``Settings`` (for ``r2migrate cutover-check``).

    Outside a Django project this configures Django with its defaults first, which is process
    global: call it from a command, not from a library that shares the process with a project.
    From a project, prefer ``conf.target_storage()``: it checks the storage the project uses.
    """
    try:
        from django.conf import settings as django_settings
        from django.core.exceptions import ImproperlyConfigured
        from storages.backends.s3 import S3Storage
    except ImportError as exc:
        raise ConfigError(
            "The cutover check needs Django and django-storages.",
            hint="pip install 'r2migrate[django]'.",
        ) from exc
    try:
        django_settings.USE_TZ  # noqa: B018  # configures from DJANGO_SETTINGS_MODULE if set
    except ImproperlyConfigured:
        django_settings.configure()
    settings.require("bucket_name")
    try:
        return S3Storage(
            bucket_name=settings.bucket_name,
            location=settings.location,
            endpoint_url=settings.effective_endpoint_url,
            region_name=settings.effective_region_name,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            security_token=settings.session_token,
            addressing_style=settings.addressing_style,
            object_parameters=dict(settings.object_parameters),
            verify=settings.verify,
            # The storage the operator is told to configure (README): it never overwrites.
            file_overwrite=False,
        )
    except ImproperlyConfigured as exc:
        raise ConfigError(f"django-storages refuses these settings: {exc}") from exc


def cutover_check(
    settings: Settings,
    state: State,
    *,
    storage: Any = None,
    deep: bool = False,
    on_progress: Callable[[int], None] | None = None,
    max_items: int = 1000,
) -> CutoverSummary:
    """Sort every reference row into works / will_break / broken_today / no_file.

    ``storage`` defaults to ``storage_from_settings``. Rows come from ``settings.references``
    (under Django: every discovered FileField) and files from ``media_root``. The storage's
    options are checked too (``storage_options``): against the live batches' targets and the
    target r2migrate is configured for.
    """
    storage = storage if storage is not None else storage_from_settings(settings)
    media_root = source.check_media_root(settings.media_root)
    refs = [
        catalog.parse_reference(r, id_column=settings.reference_id_column)
        for r in settings.references
    ]
    local = threading.local()

    def check(row: catalog.SourceRow) -> _Result:
        mine = getattr(local, "storage", None)
        if mine is None:
            # boto3 resources must not be shared between threads; a copy gets its own
            # connection (S3Storage drops its connections and bucket when copied).
            mine = local.storage = copy.copy(storage)
        result = _check_row(settings, mine, media_root, row, collisions, deep=deep)
        if on_progress is not None:
            on_progress(1)
        return result

    tally = _Tally(max_items)
    with connect(settings.database_url, connect_timeout_s=settings.connect_timeout_s) as conn:
        collisions = unicode_collisions(settings, conn, refs, media_root)
        rows = (row for ref in refs for row in catalog.iter_source_rows(conn, ref))
        for r in _bounded_map(check, rows, max(1, min(settings.workers, 32))):
            tally.add(r)
    live = live_batches(state)
    # The storage's own target only: batches migrated to another bucket prove nothing here.
    batches, _ = binding.split_by_binding(settings, live, need_source=False)
    options = check_storage_options(
        storage, batch_targets=[b.target for b in live], configured=binding.target_of(settings)
    )
    summary = tally.summary(storage, deep, tuple(b.batch_id for b in batches), options)
    for b in batches:
        state.add_event(
            b.batch_id,
            None,
            "cutover",
            "passed" if summary.passed else "failed",
            {"deep": deep, "will_break": summary.failed, "storage": summary.storage_class},
        )
    return summary


def live_batches(state: State) -> list[Batch]:
    """Batches that put objects in a bucket and still stand (no dry run, not rolled back);
    none when the ledger does not exist yet."""
    if not state.schema_version():
        return []
    return [
        b for b in state.list_batches() if not b.dry_run and b.status is not BatchStatus.ROLLED_BACK
    ]


class _Tally:
    """Counts every row's verdict and keeps the first ``max_items`` rows needing attention."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.verdicts: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.items: list[CutoverItem] = []
        self.bytes_read = self.gzip_served = 0

    def add(self, r: _Result) -> None:
        self.verdicts[r.verdict.value] += 1
        self.bytes_read += r.bytes_read
        self.gzip_served += r.gzip
        if r.verdict in (Verdict.WORKS, Verdict.NO_FILE):
            return
        self.problems.update(r.problems)
        if r.verdict is Verdict.WILL_BREAK:
            self.reasons.update(r.reasons)
        if len(self.items) < self.max_items:
            self.items.append(
                CutoverItem(
                    r.file_id,
                    r.name or "",
                    r.verdict,
                    r.storage_key,
                    r.problems,
                    r.reasons,
                    r.detail,
                )
            )

    def summary(
        self, storage: Any, deep: bool, batch_ids: tuple[str, ...], options: StorageOptions
    ) -> CutoverSummary:
        return CutoverSummary(
            storage_class=f"{type(storage).__module__}.{type(storage).__qualname__}",
            bucket_name=str(storage.bucket_name),
            location=str(storage.location or ""),
            custom_domain=getattr(storage, "custom_domain", None) or None,
            deep=deep,
            batch_ids=batch_ids,
            references_checked=sum(self.verdicts.values()),
            verdicts=dict(sorted(self.verdicts.items())),
            problems=dict(sorted(self.problems.items())),
            reasons=dict(sorted(self.reasons.items())),
            bytes_read=self.bytes_read,
            gzip_served=self.gzip_served,
            warnings=options.notes,
            items=tuple(self.items),
            option_failures=options.failures,
            options_shown=options.shown,
        )


def _bounded_map(
    work: Callable[[catalog.SourceRow], _Result], items: Iterable[catalog.SourceRow], workers: int
) -> Iterator[_Result]:
    """``map(work, items)`` on ``workers`` threads, at most ``4 × workers`` rows in flight."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="r2m-cutover")
    window: deque[Future[_Result]] = deque()
    try:
        for item in items:
            window.append(pool.submit(work, item))
            if len(window) >= workers * 4:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_row(
    settings: Settings,
    storage: Any,
    media_root: Path,
    row: catalog.SourceRow,
    collisions: frozenset[str],
    *,
    deep: bool,
) -> _Result:
    from django.core.exceptions import SuspiciousOperation
    from storages.utils import clean_name

    file_id = f"{row.source_ref}:{row.source_id}"
    name = row.name
    if name is None or not name.strip():
        return _Result(file_id, name, Verdict.NO_FILE)
    seen = examine_reference(settings, media_root, row, collisions=collisions)
    blocking = tuple(p for p in seen.problems if Problem(p).blocking)
    if seen.size_bytes is None:  # Django serves no file for this row today
        if _in_bucket(storage, name):
            return _Result(file_id, name, Verdict.IN_BUCKET_ONLY, seen.object_key)
        return _Result(
            file_id,
            name,
            Verdict.BROKEN_TODAY,
            seen.object_key,
            (CutoverProblem.NOT_ON_DISK.value,),
            blocking,
            ", ".join(blocking),
        )
    try:
        key: str = storage._normalize_name(clean_name(name))
    except SuspiciousOperation:
        return _Result(
            file_id,
            name,
            Verdict.WILL_BREAK,
            None,
            (CutoverProblem.REFUSED_BY_STORAGE.value,),
            blocking,
            "django-storages raises SuspiciousOperation for this name",
        )
    asked = _Asked()
    try:
        _ask_storage(storage, name, key, seen, media_root, blocking, asked, deep=deep)
    except FileNotFoundError:
        asked.found.append(CutoverProblem.NO_OBJECT)
    except Exception as exc:
        err = _storage_error(storage, exc, key)
        asked.found.append(CutoverProblem.ERROR)
        asked.notes.append(err.message)
    if not asked.found:
        return _Result(file_id, name, Verdict.WORKS, key, gzip=asked.gzip, bytes_read=asked.read)
    return _Result(
        file_id,
        name,
        Verdict.WILL_BREAK,
        key,
        tuple(p.value for p in asked.found),
        blocking if CutoverProblem.NO_OBJECT in asked.found else (),
        "; ".join(asked.notes),
        asked.gzip,
        asked.read,
    )


def _in_bucket(storage: Any, name: str) -> bool:
    """Whether the storage holds an object for a row with no file on disk (the site at work
    after the switch). A name it refuses or a failed request says no: the row stays broken."""
    from django.core.exceptions import SuspiciousOperation

    try:
        return bool(storage.exists(name))
    except SuspiciousOperation:
        return False
    except Exception as exc:
        _storage_error(storage, exc, name)
        return False


def _storage_error(storage: Any, exc: Exception, key: str) -> BucketError:
    """The toolkit's error for a failed storage request on one key; raised at once when it is
    wrong for every key (credentials, bucket, certificate), since then every row would fail."""
    err = translate_error(exc, op="HEAD", bucket=str(storage.bucket_name), key=key)
    if err.whole_run:
        raise err from exc
    return err


@dataclass
class _Asked:
    """What asking the storage about one row found (filled as it goes, kept on an error)."""

    found: list[CutoverProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gzip: bool = False
    read: int = 0


def _ask_storage(
    storage: Any,
    name: str,
    key: str,
    seen: MediaFile,
    media_root: Path,
    blocking: tuple[str, ...],
    asked: _Asked,
    *,
    deep: bool,
) -> None:
    """exists(), size(), the served type and encoding, and (deep) the bytes, as Django asks."""
    found, notes = asked.found, asked.notes
    if not storage.exists(name):
        found.append(CutoverProblem.NO_OBJECT)
        notes.append(
            "refused by r2migrate: " + ", ".join(blocking)
            if blocking
            else "not migrated: added after the last plan (plan again), or rolled back"
        )
        return
    size = storage.size(name)
    if size != seen.size_bytes:
        found.append(CutoverProblem.SIZE_DIFFERS)
        notes.append(f"object {size} bytes, file {seen.size_bytes}")
    obj = storage.bucket.Object(key)
    obj.load()
    expected = storage._get_write_parameters(key)
    if obj.content_type != expected.get("ContentType"):
        found.append(CutoverProblem.CONTENT_TYPE_DIFFERS)
        notes.append(f"Content-Type {obj.content_type!r}, expected {expected['ContentType']!r}")
    served_encoding = obj.content_encoding or None
    if served_encoding != expected.get("ContentEncoding"):
        found.append(CutoverProblem.CONTENT_ENCODING_DIFFERS)
        wanted = expected.get("ContentEncoding")
        notes.append(f"Content-Encoding {served_encoding!r}, expected {wanted!r}")
    asked.gzip = served_encoding is not None
    if not deep:
        return
    digest = hashlib.sha256()
    with storage.open(name, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
            asked.read += len(chunk)
    assert seen.disk_path is not None
    try:
        want, _ = source.sha256_file(media_root, seen.disk_path)
    except SourceError as exc:
        want = f"unreadable ({exc.problem.value})"
    if digest.hexdigest() != want:
        found.append(CutoverProblem.CONTENT_DIFFERS)
        notes.append(f"object SHA-256 {digest.hexdigest()}, file {want}")


def format_report(summary: CutoverSummary, *, show: int = 20) -> list[str]:
    """The report as lines, shared by ``manage.py r2migrate_cutover_check`` and the CLI."""
    where = f"s3://{summary.bucket_name}/{summary.location + '/' if summary.location else ''}"
    v = summary.verdicts
    lines = [
        f"Storage {summary.storage_class} at {where}"
        + (f" (custom domain {summary.custom_domain})" if summary.custom_domain else ""),
        f"Checked {summary.references_checked} reference row(s)"
        + (f"; read {summary.bytes_read} bytes back through storage.open()" if summary.deep else "")
        + ".",
        f"works today and after the switch: {v.get(Verdict.WORKS.value, 0)}   "
        f"will break after the switch: {v.get(Verdict.WILL_BREAK.value, 0)}   "
        f"broken today already: {v.get(Verdict.BROKEN_TODAY.value, 0)}   "
        f"no file: {v.get(Verdict.NO_FILE.value, 0)}"
        + (
            f"   only in the bucket (written after the switch): {n}"
            if (n := v.get(Verdict.IN_BUCKET_ONLY.value, 0))
            else ""
        )
        + (
            f"   served with Content-Encoding: {summary.gzip_served}" if summary.gzip_served else ""
        ),
    ]
    if summary.problems:
        rows = [(p, n, CUTOVER_MEANINGS.get(p, "")) for p, n in summary.problems.items()]
        lines += ["", *table(["problem", "rows", "meaning"], rows, max_cell_chars=100)]
    if summary.reasons:
        rows = [(p, n, Problem(p).meaning) for p, n in summary.reasons.items()]
        lines += ["", *table(["refused as", "rows", "meaning"], rows, max_cell_chars=100)]
    shown = sorted(summary.items, key=lambda i: not i.blocking)[:show] if show else []
    if shown:
        rows2 = [
            (i.verdict.value, ",".join(i.problems), i.file_id, i.storage_key or i.name, i.detail)
            for i in shown
        ]
        lines += ["", *table(["verdict", "problem", "row", "key", "detail"], rows2)]
        if len(summary.items) > len(shown):
            lines.append(f"... and {len(summary.items) - len(shown)} more")
    if summary.options_shown:
        lines.append("Storage options: " + ", ".join(f"{k}={v}" for k, v in summary.options_shown))
    for warning in summary.warnings:
        lines.append(f"warning: {warning}")
    for failure in summary.option_failures:
        lines.append(f"FAILED option: {failure}")
    if summary.passed:
        verdict = "PASSED: every row Django serves today will be served after the switch."
    elif summary.failed:
        verdict = f"FAILED: switching now would break {summary.failed} row(s) that work today."
    else:
        verdict = "FAILED: the storage's options would break the site after the switch."
    lines += ["", verdict]
    return lines
