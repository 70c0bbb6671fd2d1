"""Stage 2: inventory + HEAD → one action per object key, grouped in batches (dry run = plan).

Must not PUT or DELETE anything; with ``dry_run`` it writes nothing at all, not even to the state.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from r2migrate.errors import BucketError, Problem, SourceError, StateError
from r2migrate.media.base import open_media_source
from r2migrate.rules import binding, keys
from r2migrate.s3.bucket import Bucket, ObjectInfo
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.store.ledger import FileStatus, MediaFile, NewFile, State

log = logging.getLogger(__name__)

# Every inventory row naming one key; a tuple (one per key: 40 B less than a list).
_Group = tuple[MediaFile, ...]


class Action(StrEnum):
    UPLOAD = "upload"
    ALREADY_THERE = "already_there"  # the key holds our SHA-256: nothing to send
    CONFLICT = "conflict"  # the key holds something else: never overwritten
    REFUSE = "refuse"  # a blocking problem (missing, unsafe, ...)
    ALREADY_PLANNED = "already_planned"  # the key is in a batch already
    ERROR = "error"  # HEAD failed; planning again will retry it


@dataclass(frozen=True, slots=True)  # one per key: no __dict__
class PlanItem:
    action: Action
    object_key: str | None
    relative_path: str | None
    size_bytes: int
    file_ids: tuple[str, ...]
    reason: str = ""
    batch_id: str | None = None


@dataclass(frozen=True)
class PlanSummary:
    dry_run: bool
    batch_size: int
    actions: dict[str, int]
    bytes_by_action: dict[str, int]
    batch_ids: tuple[str, ...]
    batches_needed: int
    head_requests: int
    list_requests: int
    items: tuple[PlanItem, ...] = field(default=())

    @property
    def upload_files(self) -> int:
        return self.actions.get(Action.UPLOAD.value, 0)


def _blocking_reason(item: MediaFile) -> str | None:
    blocking = [p for p in item.problems if Problem(p).blocking]
    return ", ".join(blocking) if blocking else None


def _listed_keys(bucket: Bucket, location: str) -> tuple[set[str], int]:
    """Every key under the location, and how many LIST requests that took.

    One LIST answers for up to 1,000 keys, so planning a fresh bucket costs a handful of
    requests instead of one HEAD per file; only keys that exist are HEADed.
    """
    prefix = location.strip("/") + "/" if location.strip("/") else ""
    found: set[str] = set()
    pages = 0
    for page in bucket.iter_object_pages(prefix):
        pages += 1
        found.update(key for key, _ in page)
    return found, pages


def _decide(
    bucket: Bucket, hash_source: Callable[[str], tuple[str, int]], key: str, name: str, size: int
) -> tuple[Action, str, str | None]:
    """HEAD one key; hash the source only when an object is there (to prove it ours)."""
    try:
        info: ObjectInfo | None = bucket.head(key)
    except BucketError as exc:
        if exc.whole_run:  # access denied, no bucket, certificate: the whole plan is wrong
            raise
        return Action.ERROR, exc.message, None
    if info is None:
        return Action.UPLOAD, "", None
    if info.sha256_hex is None:
        return Action.CONFLICT, "the key holds an object without r2migrate's sha256 metadata", None
    try:
        digest, _ = hash_source(name)
    except SourceError as exc:
        return Action.REFUSE, exc.problem.value, None
    if digest == info.sha256_hex and info.size_bytes == size:
        return Action.ALREADY_THERE, "object carries this file's SHA-256", digest
    return Action.CONFLICT, "the key holds different content", None


class _SourceHasher:
    """SHA-256 of a source file, from the source the settings name (MEDIA_ROOT or media_url)."""

    def __init__(self, settings: Settings) -> None:
        self.media = open_media_source(settings)

    def __call__(self, name: str) -> tuple[str, int]:
        return self.media.sha256(name)

    def close(self) -> None:
        self.media.close()


def plan(
    settings: Settings,
    state: State,
    *,
    items: Iterable[MediaFile] | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    max_files: int | None = None,
    bucket: Bucket | None = None,
    on_progress: Callable[[StageProgress], None] | None = None,
    keep_items: bool = True,
) -> PlanSummary:
    """Decide what to do with each object key and, unless dry_run, store the batches."""
    size = batch_size or settings.batch_size
    if items is None:
        items = _latest_inventory(settings, state)
    bucket = bucket or Bucket(settings)
    bucket.check()
    target = binding.target_of(settings)
    planned = state.live_object_keys(target)  # of this target only: another target plans apart
    decided, to_head = _sort_out(items, planned)
    if max_files is not None:
        to_head = to_head[:max_files]
    listed, list_requests = _listed_keys(bucket, settings.location)
    heads = sum(1 for key, _ in to_head if key in listed)
    header = _Header(settings, bucket, listed)  # opens no connection to the media until used
    headed: list[tuple[PlanItem, str | None, _Group]] = []
    try:
        for result, digest, group in header.decide_all(to_head, max(1, settings.workers)):
            headed.append((result, digest, group))
            if on_progress is not None:
                on_progress(
                    StageProgress(
                        "",
                        len(headed),
                        len(to_head),
                        last_key=result.object_key or "",
                        last_status=result.action.value,
                        stage="plan",
                    )
                )
    finally:
        header.close()
    del to_head  # the decisions hold what is still needed (memory is per row here)
    sendable = [h for h in headed if h[0].action in _SENDABLE]
    rest = [h[0] for h in headed if h[0].action not in _SENDABLE]
    del headed
    final, batch_ids = _store_batches(settings, state, sendable, size, dry_run=dry_run)
    sent = len(sendable)
    del sendable
    final[:0] = decided
    final.extend(rest)
    actions: Counter[str] = Counter(i.action.value for i in final)
    sizes: Counter[str] = Counter()
    for i in final:
        sizes[i.action.value] += i.size_bytes
    return PlanSummary(
        dry_run=dry_run,
        batch_size=size,
        actions=dict(sorted(actions.items())),
        bytes_by_action=dict(sorted(sizes.items())),
        batch_ids=tuple(batch_ids),
        batches_needed=-(-sent // size) if sent else 0,
        head_requests=heads,
        list_requests=list_requests,
        items=tuple(final) if keep_items else (),
    )


_SENDABLE = (Action.UPLOAD, Action.ALREADY_THERE)


def _latest_inventory(settings: Settings, state: State) -> Iterable[MediaFile]:
    """The latest snapshot of this source and location: its keys and sizes are the ones to send."""
    where = binding.source_of(settings).where
    run_id = state.latest_inventory_run(source=where, location=settings.location)
    if run_id is None:
        other = state.latest_inventory_run()
        raise StateError(
            "No inventory has been taken yet."
            if other is None
            else f"No inventory has been taken of {where} with location "
            f"{settings.location!r}; the latest one is of another source or location.",
            hint="Run `r2migrate inventory` first with these settings "
            "(or `r2migrate plan --dry-run`).",
        )
    return state.iter_inventory(run_id)


def _sort_out(
    items: Iterable[MediaFile], planned: Container[str]
) -> tuple[list[PlanItem], list[tuple[str, _Group]]]:
    """Refusals and keys already planned (decided without a request), and the keys to HEAD,
    each with every inventory row that names it."""
    decided: list[PlanItem] = []
    by_key: dict[str, _Group] = {}
    for item in items:
        if item.is_orphan:
            continue
        reason = _blocking_reason(item)
        if reason is not None or item.object_key is None:
            decided.append(
                PlanItem(
                    Action.REFUSE,
                    item.object_key,
                    item.relative_path,
                    item.size_bytes or 0,
                    (item.file_id,),
                    reason or "no object key",
                )
            )
            continue
        known = by_key.get(item.object_key)
        by_key[item.object_key] = (item,) if known is None else (*known, item)
    to_head: list[tuple[str, _Group]] = []
    for key, group in by_key.items():
        first = group[0]
        ids = tuple(g.file_id for g in group)
        if key in planned:
            decided.append(
                PlanItem(
                    Action.ALREADY_PLANNED, key, first.relative_path, first.size_bytes or 0, ids
                )
            )
        else:
            to_head.append((key, group))
    return decided, to_head


class _Header:
    """Decides one key against the bucket's listing: HEAD (and hash the source) only when an
    object, or another Unicode spelling of the key, is there."""

    def __init__(self, settings: Settings, bucket: Bucket, listed: set[str]) -> None:
        self.bucket = bucket
        self.listed = listed
        self.hash_source = _SourceHasher(settings)
        # R2 stores NFC and NFD spellings as one object: a listed key that is another spelling
        # of ours would serve its bytes for our row (S3 and SeaweedFS keep both; R2 does not).
        self.folded = {keys.normalization_form(k): k for k in listed}

    def close(self) -> None:
        self.hash_source.close()

    def needs_head(self, key: str) -> bool:
        """Whether the listing holds this key or another spelling of it (else: upload)."""
        return key in self.listed or (
            bool(self.folded) and keys.normalization_form(key) in self.folded
        )

    def decide_all(
        self, to_head: Sequence[tuple[str, _Group]], workers: int
    ) -> Iterator[tuple[PlanItem, str | None, _Group]]:
        """Each key's decision, in order. A key the listing does not hold is decided here
        without a request or a thread; only the others go to ``workers`` threads, a bounded
        window at a time (no future per key, so memory stays flat with the row count)."""
        window = max(1, workers) * 64
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(to_head), window):
                part = to_head[start : start + window]
                flags = [self.needs_head(key) for key, _ in part]
                asked_for = [e for e, f in zip(part, flags, strict=True) if f]
                answers = pool.map(self.head_one, asked_for)
                for entry, asked in zip(part, flags, strict=True):
                    if asked:
                        result, digest = next(answers)
                    else:
                        result, digest = self.upload(entry), None
                    yield result, digest, entry[1]

    @staticmethod
    def upload(entry: tuple[str, _Group]) -> PlanItem:
        key, group = entry
        first = group[0]
        ids = tuple(g.file_id for g in group)
        return PlanItem(Action.UPLOAD, key, first.relative_path, first.size_bytes or 0, ids)

    def head_one(self, entry: tuple[str, _Group]) -> tuple[PlanItem, str | None]:
        key, group = entry
        first = group[0]
        assert first.relative_path is not None
        disk_name = first.disk_path or first.relative_path  # the file inventory resolved
        size = first.size_bytes or 0
        twin = self.folded.get(keys.normalization_form(key))
        if key in self.listed:
            action, reason, digest = _decide(self.bucket, self.hash_source, key, disk_name, size)
        elif twin is not None and twin != key:
            action, reason, digest = _decide(self.bucket, self.hash_source, twin, disk_name, size)
            if action is Action.ALREADY_THERE:
                # The same bytes under the other spelling: upload ours too (on R2 the
                # create-only PUT then finds that object and proves it ours).
                action, reason, digest = Action.UPLOAD, "", None
            elif action is not Action.ERROR:
                action = Action.REFUSE
                reason = f"{Problem.UNICODE_COLLISION.value}: the bucket holds {twin!r}"
        else:
            action, reason, digest = Action.UPLOAD, "", None
        ids = tuple(g.file_id for g in group)
        return PlanItem(action, key, first.relative_path, size, ids, reason), digest


def _store_batches(
    settings: Settings,
    state: State,
    sendable: Sequence[tuple[PlanItem, str | None, _Group]],
    size: int,
    *,
    dry_run: bool,
) -> tuple[list[PlanItem], list[str]]:
    """Cut the sendable keys into batches of ``size`` and, unless dry_run, store them all in one
    transaction (one statement per table, not a round trip per row or per batch)."""
    chunks = [sendable[start : start + size] for start in range(0, len(sendable), size)]
    batch_ids: list[str] = [] if dry_run else state.new_batch_ids(len(chunks))
    if batch_ids:
        state.create_batches(
            [(batch_id, len(chunk)) for batch_id, chunk in zip(batch_ids, chunks, strict=True)],
            (
                (batch_id, _new_file(item, digest, group))
                for batch_id, chunk in zip(batch_ids, chunks, strict=True)
                for item, digest, group in chunk
            ),
            batch_size=size,
            target=binding.target_of(settings),
            source=binding.source_of(settings),
            settings=settings.redacted(),
        )
        log.info("planned %d batch(es) of up to %d file(s)", len(batch_ids), size)
    final: list[PlanItem] = []
    for i, chunk in enumerate(chunks):
        batch_id = batch_ids[i] if batch_ids else None
        final.extend(_with_batch(planned_item, batch_id) for planned_item, _, _ in chunk)
    return final, batch_ids


def _with_batch(item: PlanItem, batch_id: str | None) -> PlanItem:
    if batch_id is None:  # a dry run: the item as decided (no copy per key)
        return item
    return PlanItem(
        item.action,
        item.object_key,
        item.relative_path,
        item.size_bytes,
        item.file_ids,
        item.reason,
        batch_id,
    )


def _new_file(item: PlanItem, digest: str | None, group: Sequence[MediaFile]) -> NewFile:
    first = group[0]
    assert first.object_key is not None and first.relative_path is not None
    there = item.action is Action.ALREADY_THERE
    return NewFile(
        file_id=first.file_id,
        source_refs=tuple(g.file_id for g in group),
        # The file to read: the row's name as Django resolves it on disk (see inventory).
        relative_path=first.disk_path or first.relative_path,
        object_key=first.object_key,
        size_bytes=first.size_bytes or 0,
        mtime_ns=first.mtime_ns,
        content_type=first.content_type or "application/octet-stream",
        content_encoding=first.content_encoding,
        status=FileStatus.SKIPPED if there else FileStatus.PENDING,
        source_sha256=digest if there else None,
    )
