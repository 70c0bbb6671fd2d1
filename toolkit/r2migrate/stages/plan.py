"""Stage 2: inventory + HEAD → one action per object key, grouped in batches (dry run = plan).

Must not PUT or DELETE anything; with ``dry_run`` it writes nothing at all, not even to the state.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from r2migrate.errors import BucketError, Problem, SourceError, StateError
from r2migrate.media.base import open_media_source
from r2migrate.rules import binding, keys
from r2migrate.s3.bucket import Bucket, ObjectInfo
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import FileStatus, MediaFile, NewFile, State

log = logging.getLogger(__name__)


class Action(StrEnum):
    UPLOAD = "upload"
    ALREADY_THERE = "already_there"  # the key holds our SHA-256: nothing to send
    CONFLICT = "conflict"  # the key holds something else: never overwritten
    REFUSE = "refuse"  # a blocking problem (missing, unsafe, ...)
    ALREADY_PLANNED = "already_planned"  # the key is in a batch already
    ERROR = "error"  # HEAD failed; planning again will retry it


@dataclass(frozen=True)
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
        if exc.exit_code != 1:  # access denied / no bucket: the whole plan is wrong
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
    on_progress: Callable[[int], None] | None = None,
    keep_items: bool = True,
) -> PlanSummary:
    """Decide what to do with each object key and, unless dry_run, store the batches."""
    size = batch_size or settings.batch_size
    if items is None:
        # Only a snapshot of this source and location: its keys and sizes are the ones to send.
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
        items = state.iter_inventory(run_id)
    bucket = bucket or Bucket(settings)
    bucket.check()
    hash_source = _SourceHasher(settings)  # opens no connection until it is called
    target = binding.target_of(settings)
    planned = state.live_object_keys(target)  # of this target only: another target plans apart

    decided: list[PlanItem] = []
    by_key: dict[str, list[MediaFile]] = {}
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
        by_key.setdefault(item.object_key, []).append(item)

    to_head: list[tuple[str, list[MediaFile]]] = []
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
    if max_files is not None:
        to_head = to_head[:max_files]
    listed, list_requests = _listed_keys(bucket, settings.location)
    heads = sum(1 for key, _ in to_head if key in listed)
    # R2 stores NFC and NFD spellings as one object: a listed key that is another spelling of
    # ours would serve its bytes for our row (S3 and SeaweedFS keep both; R2 does not).
    folded = {keys.normalization_form(k): k for k in listed}

    def head_one(entry: tuple[str, list[MediaFile]]) -> tuple[PlanItem, str | None]:
        key, group = entry
        first = group[0]
        assert first.relative_path is not None
        disk_name = first.disk_path or first.relative_path  # the file inventory resolved
        twin = folded.get(keys.normalization_form(key))
        if key in listed:
            action, reason, digest = _decide(
                bucket, hash_source, key, disk_name, first.size_bytes or 0
            )
        elif twin is not None and twin != key:
            action, reason, digest = _decide(
                bucket, hash_source, twin, disk_name, first.size_bytes or 0
            )
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
        return PlanItem(
            action, key, first.relative_path, first.size_bytes or 0, ids, reason
        ), digest

    headed: list[tuple[PlanItem, str | None, list[MediaFile]]] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
            for (result, digest), (_, group) in zip(
                pool.map(head_one, to_head), to_head, strict=True
            ):
                headed.append((result, digest, group))
                if on_progress is not None:
                    on_progress(1)
    finally:
        hash_source.close()

    batch_ids: list[str] = []
    sendable = [h for h in headed if h[0].action in (Action.UPLOAD, Action.ALREADY_THERE)]
    batches_needed = -(-len(sendable) // size) if sendable else 0
    final: list[PlanItem] = list(decided)
    for start in range(0, len(sendable), size):
        chunk = sendable[start : start + size]
        batch_id = None if dry_run else state.next_batch_id()
        if batch_id is not None:
            state.create_batch(
                batch_id,
                [_new_file(item, digest, group) for item, digest, group in chunk],
                batch_size=size,
                target=target,
                source=binding.source_of(settings),
                settings=settings.redacted(),
            )
            batch_ids.append(batch_id)
            log.info("planned batch %s with %d file(s)", batch_id, len(chunk))
        for planned_item, _, _ in chunk:
            final.append(_with_batch(planned_item, batch_id))
    final.extend(h[0] for h in headed if h[0].action not in (Action.UPLOAD, Action.ALREADY_THERE))

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
        batches_needed=batches_needed,
        head_requests=heads,
        list_requests=list_requests,
        items=tuple(final) if keep_items else (),
    )


def _with_batch(item: PlanItem, batch_id: str | None) -> PlanItem:
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
