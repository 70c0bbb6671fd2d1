"""The cutover check: would Django, switched to django-storages' S3Storage, serve every file?

Must never write to the bucket or the application's tables: it asks the storage exactly what the
application will ask (``exists``, ``size``, ``open``) for every reference the ledger says was
migrated, and records only one ``cutover`` event per batch in the toolkit's own history.

Per reference (a row whose name was uploaded, skipped as already there, or verified):

- the name the row holds *now* is resolved by the storage itself (``clean_name`` +
  ``_normalize_name``); a key other than the one r2migrate uploaded is ``key_differs`` (a row
  renamed since, or a ``location``/subclass that differs from the one migrated with);
- ``exists()`` false is ``missing``; ``size()`` against the ledger is ``size_differs``;
- the object's ``Content-Type``/``Content-Encoding`` (HEAD) against what the storage's
  ``_get_write_parameters`` would set for that key: ``content_type_differs`` /
  ``content_encoding_differs``;
- with ``deep``, the bytes read through ``storage.open()`` hashed against the ledger's SHA-256:
  ``content_differs``.

A row deleted since the migration is reported as ``row_gone`` and does not fail the check.
Botocore errors go through ``bucket.translate_error``; a wrong key or bucket stops the whole check
(exit 2), anything else is an ``error`` row.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from r2migrate import binding, catalog
from r2migrate.bucket import translate_error
from r2migrate.config import Settings
from r2migrate.django.render import table
from r2migrate.errors import ConfigError, ExitCode, StateError
from r2migrate.state import BatchStatus, FileRecord, FileStatus, State

__all__ = [
    "MIGRATED_STATUSES",
    "CutoverItem",
    "CutoverProblem",
    "CutoverSummary",
    "cutover_check",
    "format_report",
    "storage_from_settings",
]

MIGRATED_STATUSES = frozenset({FileStatus.UPLOADED, FileStatus.VERIFIED, FileStatus.SKIPPED})
_READ_CHUNK_BYTES = 1 << 20


class CutoverProblem(StrEnum):
    MISSING = "missing"  # storage.exists(name) is False
    SIZE_DIFFERS = "size_differs"  # storage.size(name) is not the ledger's size
    CONTENT_DIFFERS = "content_differs"  # --deep: SHA-256 of storage.open(name) differs
    CONTENT_TYPE_DIFFERS = "content_type_differs"  # HEAD vs what django-storages would set
    CONTENT_ENCODING_DIFFERS = "content_encoding_differs"
    KEY_DIFFERS = "key_differs"  # django-storages resolves the row's name to another key
    UNSAFE_NAME = "unsafe_name"  # django-storages refuses the name (SuspiciousOperation)
    BUCKET_DIFFERS = "bucket_differs"  # the storage points at another bucket than the batch
    ERROR = "error"  # a request failed; run the check again
    ROW_GONE = "row_gone"  # the row was deleted or its file cleared since (not a failure)

    @property
    def blocking(self) -> bool:
        return self is not CutoverProblem.ROW_GONE


@dataclass(frozen=True)
class CutoverItem:
    """One reference (a ``table.column:id`` row) whose check found something."""

    batch_id: str
    file_id: str
    name: str
    object_key: str  # the key r2migrate uploaded
    storage_key: str | None  # the key django-storages resolves ``name`` to (None: refused)
    problems: tuple[str, ...]
    detail: str = ""

    @property
    def blocking(self) -> bool:
        return any(CutoverProblem(p).blocking for p in self.problems)


@dataclass(frozen=True)
class CutoverSummary:
    storage_class: str
    bucket_name: str
    location: str
    custom_domain: str | None
    deep: bool
    batch_ids: tuple[str, ...]
    references_checked: int
    names_checked: int  # distinct names asked of the storage
    references_ok: int
    problems: dict[str, int]
    bytes_read: int  # deep reads
    gzip_served: int  # objects served with a Content-Encoding (clients decode them)
    warnings: tuple[str, ...] = ()
    items: tuple[CutoverItem, ...] = field(default=())  # every reference with a problem

    @property
    def failed(self) -> int:
        return sum(1 for i in self.items if i.blocking)

    @property
    def passed(self) -> bool:
        return self.failed == 0


@dataclass(frozen=True)
class _Result:
    storage_key: str | None
    problems: tuple[str, ...]
    detail: str
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
        )
    except ImproperlyConfigured as exc:
        raise ConfigError(f"django-storages refuses these settings: {exc}") from exc


def cutover_check(
    settings: Settings,
    state: State,
    *,
    storage: Any = None,
    deep: bool = False,
    batch_id: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CutoverSummary:
    """Ask ``storage`` (default: ``storage_from_settings``) for every migrated reference.

    Raises ``BatchNotFound`` for an unknown ``batch_id`` and ``StateError`` when the ledger holds
    no migrated file to check; per-reference findings are data in the summary.
    """
    storage = storage if storage is not None else storage_from_settings(settings)
    if state.schema_version() == 0:
        raise StateError(
            f"Nothing has been migrated yet: schema {state.schema!r} holds no ledger.",
            hint="Migrate first (`manage.py migrate_files_to_r2`), then check the cutover.",
        )
    if batch_id is not None:
        batches = [state.get_batch(batch_id)]
    else:
        # The storage's own target only: batches migrated to another bucket prove nothing here.
        batches, _ = binding.split_by_binding(
            settings,
            [
                b
                for b in state.list_batches()
                if not b.dry_run and b.status is not BatchStatus.ROLLED_BACK
            ],
            need_source=False,
        )
    records = [
        rec
        for b in batches
        for rec in state.batch_files(b.batch_id)
        if rec.status in MIGRATED_STATUSES
    ]
    if not records:
        where = f"batch {batch_id!r}" if batch_id else f"schema {state.schema!r}"
        raise StateError(
            f"No migrated file in {where} to check.",
            hint="Migrate first (`manage.py migrate_files_to_r2`), then check the cutover.",
        )
    bucket_of = {b.batch_id: b.bucket_name for b in batches}
    current = _current_names(settings, state, records)

    # One storage round per distinct (name, ledger row); references sharing a name share it.
    tasks: dict[tuple[str, int], FileRecord] = {}
    refs: list[tuple[FileRecord, str, str | None]] = []  # (record, file_id, current name)
    for rec in records:
        for file_id in rec.source_refs or (rec.file_id,):
            name = current.get(file_id)
            if name:
                tasks.setdefault((name, rec.id), rec)
            refs.append((rec, file_id, name or None))

    local = threading.local()

    def check(task: tuple[tuple[str, int], FileRecord]) -> tuple[tuple[str, int], _Result]:
        (name, _), rec = task
        mine = getattr(local, "storage", None)
        if mine is None:
            # boto3 resources must not be shared between threads; a copy gets its own
            # connection (S3Storage drops its connections and bucket when copied).
            mine = local.storage = copy.copy(storage)
        same_bucket = bucket_of.get(rec.batch_id) == storage.bucket_name
        result = _check_one(mine, name, rec, deep=deep, same_bucket=same_bucket)
        if on_progress is not None:
            on_progress(1)
        return task[0], result

    workers = max(1, min(settings.workers, 32))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="r2m-cutover") as pool:
        results = dict(pool.map(check, tasks.items()))

    items: list[CutoverItem] = []
    counts: Counter[str] = Counter()
    ok = 0
    for rec, file_id, name in refs:
        if name is None:
            gone = file_id not in current
            item = CutoverItem(
                rec.batch_id,
                file_id,
                rec.relative_path,
                rec.object_key,
                None,
                (CutoverProblem.ROW_GONE.value,),
                ("the row no longer exists" if gone else "the row's file was cleared")
                + "; nothing will ask for this file",
            )
        else:
            r = results[(name, rec.id)]
            if not r.problems:
                ok += 1
                continue
            item = CutoverItem(
                rec.batch_id, file_id, name, rec.object_key, r.storage_key, r.problems, r.detail
            )
        counts.update(item.problems)
        items.append(item)

    summary = CutoverSummary(
        storage_class=f"{type(storage).__module__}.{type(storage).__qualname__}",
        bucket_name=str(storage.bucket_name),
        location=str(storage.location or ""),
        custom_domain=getattr(storage, "custom_domain", None) or None,
        deep=deep,
        batch_ids=tuple(b.batch_id for b in batches),
        references_checked=len(refs),
        names_checked=len(tasks),
        references_ok=ok,
        problems=dict(sorted(counts.items())),
        bytes_read=sum(r.bytes_read for r in results.values()),
        gzip_served=sum(1 for r in results.values() if r.gzip),
        warnings=tuple(_warnings(storage)),
        items=tuple(items),
    )
    for b in batches:
        mine = [i for i in items if i.batch_id == b.batch_id and i.blocking]
        state.add_event(
            b.batch_id,
            None,
            "cutover",
            "failed" if mine else "passed",
            {"deep": deep, "failed": len(mine), "storage": summary.storage_class},
        )
    return summary


def _current_names(
    settings: Settings, state: State, records: Sequence[FileRecord]
) -> dict[str, str | None]:
    """``file_id → name`` the application's rows hold now, for the ledger's references only.

    Streams each referenced table once (read-only); a ledger reference whose row is gone is
    absent from the result.
    """
    wanted: dict[str, set[str]] = {}
    for rec in records:
        for file_id in rec.source_refs or (rec.file_id,):
            label, _, source_id = file_id.rpartition(":")
            wanted.setdefault(label, set()).add(source_id)
    found: dict[str, str | None] = {}
    for label, ids in wanted.items():
        ref = catalog.parse_reference(label, id_column=settings.reference_id_column)
        for row in catalog.iter_source_rows(state.conn, ref):
            if row.source_id in ids:
                found[f"{label}:{row.source_id}"] = row.name
    return found


def _check_one(
    storage: Any, name: str, rec: FileRecord, *, deep: bool, same_bucket: bool
) -> _Result:
    from django.core.exceptions import SuspiciousOperation
    from storages.utils import clean_name

    if not same_bucket:
        return _Result(
            None,
            (CutoverProblem.BUCKET_DIFFERS.value,),
            f"the storage reads bucket {storage.bucket_name!r}; this batch went elsewhere",
        )
    try:
        key: str = storage._normalize_name(clean_name(name))
    except SuspiciousOperation:
        return _Result(None, (CutoverProblem.UNSAFE_NAME.value,), "django-storages refuses it")
    problems: list[CutoverProblem] = []
    notes: list[str] = []
    if key != rec.object_key:
        problems.append(CutoverProblem.KEY_DIFFERS)
        notes.append(f"django-storages reads {key!r}, r2migrate uploaded {rec.object_key!r}")
    gzip = False
    read = 0
    try:
        if not storage.exists(name):
            problems.append(CutoverProblem.MISSING)
            return _Result(key, tuple(p.value for p in problems), "; ".join(notes))
        size = storage.size(name)
        if size != rec.size_bytes:
            problems.append(CutoverProblem.SIZE_DIFFERS)
            notes.append(f"size {size}, ledger {rec.size_bytes}")
        obj = storage.bucket.Object(key)
        obj.load()
        expected = storage._get_write_parameters(key)
        if obj.content_type != expected.get("ContentType"):
            problems.append(CutoverProblem.CONTENT_TYPE_DIFFERS)
            notes.append(f"Content-Type {obj.content_type!r}, expected {expected['ContentType']!r}")
        served_encoding = obj.content_encoding or None
        if served_encoding != expected.get("ContentEncoding"):
            problems.append(CutoverProblem.CONTENT_ENCODING_DIFFERS)
            wanted = expected.get("ContentEncoding")
            notes.append(f"Content-Encoding {served_encoding!r}, expected {wanted!r}")
        gzip = served_encoding is not None
        if deep:
            digest = hashlib.sha256()
            with storage.open(name, "rb") as fh:
                while chunk := fh.read(_READ_CHUNK_BYTES):
                    digest.update(chunk)
                    read += len(chunk)
            want = rec.object_sha256 or rec.source_sha256
            if digest.hexdigest() != want:
                problems.append(CutoverProblem.CONTENT_DIFFERS)
                notes.append(f"SHA-256 {digest.hexdigest()}, ledger {want}")
    except FileNotFoundError:
        problems.append(CutoverProblem.MISSING)
    except Exception as exc:
        err = translate_error(exc, op="HEAD", bucket=str(storage.bucket_name), key=key)
        if err.exit_code == ExitCode.CONFIG:  # wrong credentials or bucket: all would fail
            raise err from exc
        problems.append(CutoverProblem.ERROR)
        notes.append(err.message)
    return _Result(key, tuple(p.value for p in problems), "; ".join(notes), gzip, read)


def _warnings(storage: Any) -> Iterable[str]:
    acl = getattr(storage, "default_acl", None)
    if acl:
        yield (
            f"default_acl is {acl!r}, but r2migrate uploads without an ACL (R2 has none): on S3, "
            "objects that must be public need a bucket policy"
        )
    if getattr(storage, "gzip", False):
        yield (
            "gzip (AWS_IS_GZIPPED) is on: new uploads of text types are compressed; migrated "
            "objects were stored as they were on disk"
        )


def format_report(summary: CutoverSummary, *, show: int = 20) -> list[str]:
    """The report as lines, shared by ``manage.py r2migrate_cutover_check`` and the CLI."""
    where = f"s3://{summary.bucket_name}/{summary.location + '/' if summary.location else ''}"
    lines = [
        f"Storage {summary.storage_class} at {where}"
        + (f" (custom domain {summary.custom_domain})" if summary.custom_domain else ""),
        f"Checked {summary.references_checked} reference(s), {summary.names_checked} name(s) in "
        f"{len(summary.batch_ids)} batch(es)"
        + (f"; read {summary.bytes_read} bytes back through storage.open()" if summary.deep else "")
        + ".",
        f"OK: {summary.references_ok}   failed: {summary.failed}"
        + (
            f"   served with Content-Encoding: {summary.gzip_served}" if summary.gzip_served else ""
        ),
    ]
    if summary.problems:
        lines += ["", *table(["problem", "references"], list(summary.problems.items()))]
    if summary.items and show:
        rows = [
            (",".join(i.problems), i.file_id, i.storage_key or i.object_key, i.detail)
            for i in summary.items[:show]
        ]
        lines += ["", *table(["problem", "row", "key", "detail"], rows)]
        if len(summary.items) > show:
            lines.append(f"... and {len(summary.items) - show} more")
    for warning in summary.warnings:
        lines.append(f"warning: {warning}")
    lines += [
        "",
        "PASSED: the storage serves every migrated file."
        if summary.passed
        else "FAILED: switching now would break the rows listed above.",
    ]
    return lines
