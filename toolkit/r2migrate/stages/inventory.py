"""Stage 1: every referenced name joined with the disk: problems, sizes, cost and time.

Must not write to the bucket or modify a source file; it only reads the application's tables and
MEDIA_ROOT, and (unless told not to) stores its snapshot in the toolkit's own tables.

With ``source = "http"`` the disk is not looked at: each name is checked as text, then sized
with a HEAD request to ``media_url`` (``workers`` at a time, rows kept in order); a 404 is a
``missing`` row, and orphans cannot be found (a web server does not list its folder).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from r2migrate.errors import Problem, SourceError, UnsafePath
from r2migrate.media.base import MediaSource, open_media_source
from r2migrate.media.sources import DiskSource
from r2migrate.rules import binding, keys
from r2migrate.rules.pricing import (
    CLASS_A_USD_PER_MILLION,
    CLASS_B_USD_PER_MILLION,
    STORAGE_USD_PER_GB_MONTH,
)
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.store import catalog
from r2migrate.store.ledger import Connection, MediaFile, State, connect

DEFAULT_FILES_PER_S = 250.0  # measured on 2 cores against a local server; see `make bench`
DEFAULT_MIB_PER_S = 60.0

# The tool's own files under MEDIA_ROOT: the demo sample's marker (``dev/sample.py``). Never
# reported as orphans: nothing of the application's is missing a row.
TOOL_FILES = frozenset({".r2migrate-sample"})

_HISTOGRAM_EDGES = (0, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30)


@dataclass(frozen=True)
class CostEstimate:
    """What migrating the migratable files costs on R2 and how long it takes at a throughput."""

    class_a_ops: int
    class_a_usd: float
    class_b_ops_verify: int
    class_b_usd_verify: float
    storage_gb: float
    storage_usd_per_month: float
    files_per_s: float
    mib_per_s: float
    seconds: float


@dataclass(frozen=True)
class InventorySummary:
    run_id: int | None
    references: tuple[str, ...]
    rows: int  # referencing rows read
    unique_names: int
    files_ok: int  # referenced rows with no blocking problem
    bytes_ok: int
    migratable_files: int  # unique object keys that can be uploaded
    migratable_bytes: int
    orphans: int
    orphan_bytes: int
    problems: dict[str, int]
    size_histogram: tuple[tuple[str, int], ...]
    estimate: CostEstimate
    problem_examples: tuple[MediaFile, ...] = field(default=())

    @property
    def blocked_rows(self) -> int:
        return self.rows - self.files_ok


def estimate_cost(
    files: int,
    total_bytes: int,
    *,
    multipart_files: int = 0,
    extra_parts: int = 0,
    files_per_s: float = DEFAULT_FILES_PER_S,
    mib_per_s: float = DEFAULT_MIB_PER_S,
) -> CostEstimate:
    """R2's bill for the writes: one PUT per small file; create + parts + complete per large."""
    class_a = (files - multipart_files) + multipart_files * 2 + extra_parts
    gb = total_bytes / 1e9
    seconds = max(files / files_per_s if files_per_s else 0.0, total_bytes / (mib_per_s * 2**20))
    return CostEstimate(
        class_a_ops=class_a,
        class_a_usd=round(class_a * CLASS_A_USD_PER_MILLION / 1e6, 6),
        class_b_ops_verify=files,
        class_b_usd_verify=round(files * CLASS_B_USD_PER_MILLION / 1e6, 6),
        storage_gb=round(gb, 6),
        storage_usd_per_month=round(gb * STORAGE_USD_PER_GB_MONTH, 6),
        files_per_s=files_per_s,
        mib_per_s=mib_per_s,
        seconds=round(seconds, 1),
    )


def _histogram_label(lo: int, hi: int | None) -> str:
    def fmt(n: int) -> str:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if n >= size:
                return f"{n // size} {unit}"
        return f"{n} B"

    return f"≥ {fmt(lo)}" if hi is None else f"{fmt(lo)}–{fmt(hi)}"


def _histogram_bin(size: int) -> int:
    return max(0, bisect.bisect_right(_HISTOGRAM_EDGES, size) - 1)


def scan_media(settings: Settings) -> Iterator[MediaFile]:
    """Stream one MediaFile per referencing row, then one per orphan on disk.

    Reads the application's tables on a connection of its own, so the caller's state connection
    is free to COPY the rows into the snapshot while they stream. The tables are read twice:
    once for the names alone (Unicode collisions must refuse the first row of a pair too), then
    for the rows. Each row's file is the one Django's ``FileSystemStorage`` serves today
    (``source.media_name``), or its one Unicode-equivalent spelling on disk; the orphans are
    exactly the files on disk that no row resolves to. A name on disk that is not UTF-8 is stored
    escaped (``keys.escape_name``) and flagged ``name_not_utf8``.
    """
    media = open_media_source(settings)
    media.check()  # a missing MEDIA_ROOT fails the command, not every row
    refs = [
        catalog.parse_reference(r, id_column=settings.reference_id_column)
        for r in settings.references
    ]
    seen_keys: set[str] = set()
    resolved: set[str] = set()

    with media:
        with connect(settings.database_url, connect_timeout_s=settings.connect_timeout_s) as conn:
            collisions = _unicode_collisions(
                (row.name for ref in refs for row in catalog.iter_source_rows(conn, ref)),
                media.same_content,
            )

            def rows() -> Iterator[MediaFile]:
                for ref in refs:
                    for row in catalog.iter_source_rows(conn, ref):
                        yield _examine_row(settings, row, seen_keys, collisions)

            # Over HTTP each stat is a HEAD: ``workers`` in flight, results in row order.
            workers = settings.workers if media.concurrent_stats else 1
            for item in _ordered_map(lambda item: _locate(media, item), rows(), workers):
                if item.disk_path is not None:
                    # 'a.txt/' is refused (django-storages keeps the '/'), yet names a.txt.
                    resolved.add(item.disk_path.rstrip("/"))
                yield item
        yield from _orphans(media, resolved)


def _orphans(media: MediaSource, resolved: set[str]) -> Iterator[MediaFile]:
    """The files the source lists that no row resolves to (none where it cannot list)."""
    unlisted: list[str] = []

    def note_unlisted(name: str, exc: SourceError) -> None:
        # A folder we may not list: record it as a problem row and keep walking.
        unlisted.append(name)

    for name in media.iter_files(on_error=note_unlisted):
        while unlisted:
            yield _unlisted_row(unlisted.pop(0))
        if name in resolved or name in TOOL_FILES:
            continue
        try:
            st = media.stat(name)
            size: int | None = st.size_bytes
            mtime: int | None = st.mtime_ns
        except SourceError:
            size = mtime = None
        yield _orphan_row(name, size, mtime, Problem.ORPHAN)
    for name in unlisted:
        yield _unlisted_row(name)


def examine_reference(
    settings: Settings,
    media_root: Path,
    row: catalog.SourceRow,
    *,
    collisions: frozenset[str] = frozenset(),
) -> MediaFile:
    """One row as inventory sees it: its key, the file it resolves to, and its problems.

    For checks that walk the rows themselves (the cutover check). Duplicates are not looked
    for; ``collisions`` comes from ``unicode_collisions``.
    """
    return _locate(DiskSource(media_root), _examine_row(settings, row, set(), collisions))


def unicode_collisions(
    settings: Settings, conn: Connection, refs: Iterable[catalog.Reference], media_root: Path
) -> frozenset[str]:
    """The row names refused as ``unicode_collision`` (one pass over the names)."""
    return _unicode_collisions(
        (row.name for ref in refs for row in catalog.iter_source_rows(conn, ref)),
        DiskSource(media_root).same_content,
    )


def _orphan_row(name: str, size: int | None, mtime: int | None, problem: Problem) -> MediaFile:
    problems = [problem.value]
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 cannot reach PostgreSQL, CSV or JSON as they are.
        name = keys.escape_name(name)
        problems.append(Problem.NAME_NOT_UTF8.value)
    return MediaFile(
        file_id=f"orphan:{name}",
        source_ref=None,
        source_id=None,
        relative_path=name,
        object_key=None,
        size_bytes=size,
        mtime_ns=mtime,
        content_type=None,
        content_encoding=None,
        problems=tuple(problems),
    )


def _unicode_collisions(
    names: Iterable[str | None], same_bytes: Callable[[list[str]], bool] | None
) -> frozenset[str]:
    """Row names that another row's name equals after NFC, spelled with other bytes.

    R2 stores NFC and NFD spellings as one object, so after the switch one row would serve the
    other's bytes: every spelling of such a group is refused, unless ``same_bytes`` says all of
    them name identical content. Holds one entry per distinct name while it runs.
    """
    first: dict[str, str] = {}  # NFC form -> the first spelling seen (no set per name)
    groups: dict[str, set[str]] = {}  # only the forms spelled more than one way
    for name in names:
        if name:
            form = keys.normalization_form(name)
            seen = first.setdefault(form, name)
            if seen != name:
                groups.setdefault(form, {seen}).add(name)
    del first
    refused: set[str] = set()
    for spellings in groups.values():
        if same_bytes is not None and same_bytes(sorted(spellings)):
            continue
        refused.update(spellings)
    return frozenset(refused)


def _locate(media: MediaSource, item: MediaFile) -> MediaFile:
    """The row with the file it resolves to on the source, its size and mtime, or why there is
    none."""
    name = item.relative_path
    if name is None or not name.strip():
        return item
    found = media.locate(name, refused=item.problems)
    problems = tuple(dict.fromkeys((*item.problems, *found.problems)))
    return dataclasses.replace(
        item,
        problems=problems,
        disk_path=found.name,
        size_bytes=found.stat.size_bytes if found.stat else None,
        mtime_ns=found.stat.mtime_ns if found.stat else None,
    )


def _ordered_map(
    work: Callable[[MediaFile], MediaFile], items: Iterable[MediaFile], workers: int
) -> Iterator[MediaFile]:
    """``map(work, items)`` on ``workers`` threads with a bounded window, results in input order."""
    if workers <= 1:  # no thread to gain from
        yield from map(work, items)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="r2m-head")
    window: deque[Future[MediaFile]] = deque()
    try:
        for item in items:
            window.append(pool.submit(work, item))
            if len(window) >= max(1, workers) * 4:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _unlisted_row(name: str) -> MediaFile:
    return _orphan_row(name, None, None, Problem.UNREADABLE)


def _examine_row(
    settings: Settings,
    row: catalog.SourceRow,
    seen_keys: set[str],
    collisions: frozenset[str],
) -> MediaFile:
    """What the name alone says: its object key, headers and the problems of the text."""
    problems: list[Problem] = []
    name = row.name
    key: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    file_id = f"{row.source_ref}:{row.source_id}"
    if name is None or not name.strip():
        problems.append(Problem.EMPTY_NAME)
    else:
        if name in collisions:
            problems.append(Problem.UNICODE_COLLISION)
        try:
            key = keys.object_key_for(name, location=settings.location)
        except UnsafePath as exc:
            problems.append(exc.problem)
        if key is not None:
            if key in seen_keys:
                problems.append(Problem.DUPLICATE_REFERENCE)
            seen_keys.add(key)
            problems.extend(keys.key_problems(key))
            headers = keys.content_headers_for(name, object_parameters=settings.object_parameters)
            content_type, content_encoding = headers.content_type, headers.content_encoding
            # The trap is judged without object_parameters: the headers above are, when empty.
            trap = (
                keys.is_gzip_trap(name)
                if settings.object_parameters
                else headers.content_encoding is not None
            )
            if trap:
                problems.append(Problem.GZIP_ENCODING)
    ordered = tuple(dict.fromkeys(p.value for p in problems))
    return MediaFile(
        file_id=file_id,
        source_ref=row.source_ref,
        source_id=row.source_id,
        relative_path=name,
        object_key=key,
        size_bytes=None,
        mtime_ns=None,
        content_type=content_type,
        content_encoding=content_encoding,
        problems=ordered,
    )


def is_blocked(item: MediaFile) -> bool:
    return any(Problem(p).blocking for p in item.problems)


def inventory(
    settings: Settings,
    state: State,
    *,
    save: bool = True,
    files_per_s: float = DEFAULT_FILES_PER_S,
    mib_per_s: float = DEFAULT_MIB_PER_S,
    on_file: Callable[[MediaFile], None] | None = None,
    on_progress: Callable[[StageProgress], None] | None = None,
    max_examples: int = 1000,
) -> InventorySummary:
    """Scan references and disk; store the snapshot unless `save` is False (dry runs)."""
    census = _Census(settings, max_examples)

    def observe(items: Iterator[MediaFile]) -> Iterator[MediaFile]:
        for item in items:
            census.add(item)
            if on_file is not None:
                on_file(item)
            if on_progress is not None:
                on_progress(census.progress(item))
            yield item

    scanned = observe(scan_media(settings))
    run_id: int | None = None
    if save:
        run_id = state.save_inventory(
            scanned,
            media_root=binding.source_of(settings).where,  # the source it measured
            references=settings.references,
            location=settings.location,
        )
    else:
        for _ in scanned:
            pass
    summary = census.summary(run_id, files_per_s=files_per_s, mib_per_s=mib_per_s)
    if run_id is not None:
        state.set_inventory_summary(run_id, summary_dict(summary))
    return summary


class _Census:
    """Counts what the scan finds, one row at a time, for the inventory's summary."""

    def __init__(self, settings: Settings, max_examples: int) -> None:
        self.settings = settings
        self.max_examples = max_examples
        self.problems: Counter[str] = Counter()
        self.hist = [0] * len(_HISTOGRAM_EDGES)
        self.examples: list[MediaFile] = []
        self.totals = Counter[str]()
        self.keys_seen: set[str] = set()
        self.names: set[str] = set()
        self.multipart = 0
        self.extra_parts = 0

    def add(self, item: MediaFile) -> None:
        totals = self.totals
        self.problems.update(item.problems)
        if item.is_orphan:
            totals["orphans"] += 1
            totals["orphan_bytes"] += item.size_bytes or 0
        else:
            totals["rows"] += 1
            if item.relative_path:
                self.names.add(item.relative_path)
            if not is_blocked(item):
                totals["files_ok"] += 1
                totals["bytes_ok"] += item.size_bytes or 0
                if item.object_key is not None and item.object_key not in self.keys_seen:
                    self.keys_seen.add(item.object_key)
                    self._add_migratable(item.size_bytes or 0)
        if item.problems and len(self.examples) < self.max_examples:
            self.examples.append(item)

    def progress(self, item: MediaFile) -> StageProgress:
        """Where the scan is, after ``item`` (files_total 0: the walk does not know it yet)."""
        totals = self.totals
        return StageProgress(
            "",
            totals["rows"] + totals["orphans"],
            0,
            bytes_done=totals["bytes_ok"] + totals["orphan_bytes"],
            last_key=item.relative_path or item.file_id,
            last_status=",".join(item.problems) or "ok",
            stage="inventory",
        )

    def _add_migratable(self, size: int) -> None:
        self.totals["migratable"] += 1
        self.totals["migratable_bytes"] += size
        self.hist[_histogram_bin(size)] += 1
        if size > self.settings.multipart_threshold_bytes:
            self.multipart += 1
            self.extra_parts += math.ceil(size / self.settings.multipart_chunksize_bytes)

    def summary(
        self, run_id: int | None, *, files_per_s: float, mib_per_s: float
    ) -> InventorySummary:
        totals = self.totals
        labels = [
            _histogram_label(lo, _HISTOGRAM_EDGES[i + 1] if i + 1 < len(_HISTOGRAM_EDGES) else None)
            for i, lo in enumerate(_HISTOGRAM_EDGES)
        ]
        return InventorySummary(
            run_id=run_id,
            references=tuple(self.settings.references),
            rows=totals["rows"],
            unique_names=len(self.names),
            files_ok=totals["files_ok"],
            bytes_ok=totals["bytes_ok"],
            migratable_files=totals["migratable"],
            migratable_bytes=totals["migratable_bytes"],
            orphans=totals["orphans"],
            orphan_bytes=totals["orphan_bytes"],
            problems=dict(sorted(self.problems.items())),
            size_histogram=tuple(zip(labels, self.hist, strict=True)),
            estimate=estimate_cost(
                totals["migratable"],
                totals["migratable_bytes"],
                multipart_files=self.multipart,
                extra_parts=self.extra_parts,
                files_per_s=files_per_s,
                mib_per_s=mib_per_s,
            ),
            problem_examples=tuple(self.examples),
        )


def summary_dict(summary: InventorySummary) -> dict[str, object]:
    """JSON-ready view (for --json, results.json and the inventory_runs row)."""
    return {
        "run_id": summary.run_id,
        "references": list(summary.references),
        "rows": summary.rows,
        "unique_names": summary.unique_names,
        "files_ok": summary.files_ok,
        "bytes_ok": summary.bytes_ok,
        "migratable_files": summary.migratable_files,
        "migratable_bytes": summary.migratable_bytes,
        "orphans": summary.orphans,
        "orphan_bytes": summary.orphan_bytes,
        "problems": summary.problems,
        "size_histogram": [list(x) for x in summary.size_histogram],
        "estimate": summary.estimate.__dict__,
    }
