"""The use-cases every front end calls: plan, run, repair, verify, roll back, status, enqueue.

Must never parse arguments or render anything: the CLI, the API, the Django commands and the
notebooks parse, call one function here, and render what it returns. Each function takes the
``Settings`` first and keyword options after; it checks the settings it needs, opens its own
``State`` (or uses the one passed as ``state=``) and closes it again, and raises the library's
``ToolkitError``s unchanged.

The ledger rule lives here once: only a plan that stores batches may create or upgrade the ledger
(``migrate``); every other use-case reads it and raises ``SchemaNotReady`` (exit 4) when it is
missing or older, never issuing DDL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from r2migrate.repairs import RepairSummary, repair
from r2migrate.report.audit import BatchProgress, progress_snapshot
from r2migrate.rules import binding
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.inventory import InventorySummary, inventory
from r2migrate.stages.plan import PlanSummary, plan
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.rollback import RollbackProgress, RollbackSummary, rollback
from r2migrate.stages.transfer import Progress, RunSummary, run
from r2migrate.stages.verify import VerifyProgress, VerifySummary, verify
from r2migrate.store.ledger import Batch, FileRecord, MediaFile, State, open_state

__all__ = [
    "BatchOverview",
    "Enqueued",
    "PlannedBatches",
    "RanBatches",
    "RepairedBatches",
    "batch_status",
    "batches_to_run",
    "enqueue_batch",
    "list_batches",
    "open_state",
    "plan_batches",
    "repair_batches",
    "rollback_batch",
    "run_batches",
    "verify_batches",
]


@dataclass(frozen=True)
class PlannedBatches:
    """What ``plan_batches`` did: the inventory it took and the plan made from it."""

    inventory: InventorySummary
    plan: PlanSummary


@dataclass(frozen=True)
class RanBatches:
    """What ``run_batches`` did, and each batch it touched as the ledger holds it afterwards."""

    summary: RunSummary
    batches: list[Batch]


@dataclass(frozen=True)
class RepairedBatches:
    """What ``repair_batches`` did, and each batch it looked at as the ledger holds it after."""

    summary: RepairSummary
    batches: list[Batch]


@dataclass(frozen=True)
class BatchOverview:
    """One batch as the ledger holds it, where it stands, and (when asked for) its files.

    ``verify_problems``: files whose last check failed, by outcome (``{"differ": 2}``); the
    proven ones are ``batch.verified_files``. ``queued``: a job for it waits or runs in the
    ``r2migrate worker`` queue.
    """

    batch: Batch
    progress: BatchProgress
    files: list[FileRecord] = field(default_factory=list)
    verify_problems: dict[str, int] = field(default_factory=dict)
    queued: bool = False


@dataclass(frozen=True)
class Enqueued:
    """A batch handed to the ``r2migrate worker`` queue (``queued`` False: already there)."""

    batch_id: str
    queued: bool
    jobs: dict[str, int]  # the queue's batch jobs by status (todo, doing, succeeded, ...)


@contextmanager
def _using(
    settings: Settings, state: State | None, *, migrate: bool = False, require_ledger: bool = True
) -> Iterator[State]:
    if state is not None:
        yield state
        return
    with open_state(settings, migrate=migrate, require_ledger=require_ledger) as own:
        yield own


def plan_batches(
    settings: Settings,
    *,
    dry_run: bool = False,
    batch_size: int | None = None,
    max_files: int | None = None,
    on_file: Callable[[MediaFile], None] | None = None,
    on_inventory_progress: Callable[[StageProgress], None] | None = None,
    on_plan_progress: Callable[[StageProgress], None] | None = None,
    bucket: Bucket | None = None,
    state: State | None = None,
) -> PlannedBatches:
    """Take a fresh inventory, then plan: store batches, or with ``dry_run`` decide only.

    A dry run writes nothing anywhere, not even the ledger's schema: the inventory is kept in
    memory and handed to the plan. ``on_file`` sees every inventoried row (orphans included);
    the two progress callbacks get the running counts (``StageProgress``) of files scanned
    and keys looked up.
    """
    settings.require("database_url", *settings.source_settings, "bucket_name")
    collected: list[MediaFile] = []

    def seen(item: MediaFile) -> None:
        if dry_run:
            collected.append(item)
        if on_file is not None:
            on_file(item)

    with _using(settings, state, migrate=not dry_run, require_ledger=False) as st:
        taken = inventory(
            settings, st, save=not dry_run, on_file=seen, on_progress=on_inventory_progress
        )
        planned = plan(
            settings,
            st,
            items=collected if dry_run else None,
            dry_run=dry_run,
            batch_size=batch_size,
            max_files=max_files,
            bucket=bucket,
            on_progress=on_plan_progress,
        )
    return PlannedBatches(inventory=taken, plan=planned)


def batches_to_run(
    settings: Settings,
    *,
    batch_id: str | None = None,
    max_batches: int | None = None,
    state: State | None = None,
) -> list[Batch]:
    """The batches ``run_batches`` would take, oldest first (for a progress bar's total):
    ``batch_id`` alone, or every batch of the configured target with work left."""
    settings.require("database_url", *(() if batch_id else _target_settings(settings)))
    with _using(settings, state) as st:
        if batch_id:
            todo = [st.get_batch(batch_id)]
        else:
            todo, _ = binding.split_by_binding(settings, st.batches_to_run())
    return todo[:max_batches] if max_batches is not None else todo


def run_batches(
    settings: Settings,
    *,
    batch_id: str | None = None,
    resume: bool = False,
    max_batches: int | None = None,
    processes: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    bucket: Bucket | None = None,
    state: State | None = None,
) -> RanBatches:
    """Upload one batch (``batch_id``, which brings its own target and source) or every batch
    of the configured target with work left. Resumable; raises ``Interrupted`` once ``stop`` is
    set and the uploads in flight are recorded."""
    settings.require("database_url", *(() if batch_id else _target_settings(settings)))
    with _using(settings, state) as st:
        if batch_id:
            st.get_batch(batch_id)  # BatchNotFound (exit 4) before any bucket request
        summary = run(
            settings,
            st,
            batch_id=batch_id,
            resume=resume,
            max_batches=max_batches,
            processes=processes,
            stop=stop,
            on_progress=on_progress,
            bucket=bucket,
        )
        batches = [st.get_batch(b.batch_id) for b in summary.batches]
    return RanBatches(summary=summary, batches=batches)


def repair_batches(
    settings: Settings,
    *,
    batch_id: str | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    bucket: Bucket | None = None,
    state: State | None = None,
) -> RepairedBatches:
    """Send again only the files verify found missing or different and those whose source
    changed, in one batch (``batch_id``) or every batch of the configured target; the rest of
    each batch is left alone and a key holding someone else's object stays a conflict."""
    settings.require("database_url", *(() if batch_id else _target_settings(settings)))
    with _using(settings, state) as st:
        summary = repair(
            settings, st, batch_id=batch_id, bucket=bucket, stop=stop, on_progress=on_progress
        )
        batches = [st.get_batch(b) for b in summary.batch_ids]
    return RepairedBatches(summary=summary, batches=batches)


def verify_batches(
    settings: Settings,
    *,
    batch_id: str | None = None,
    deep: bool = False,
    sample: int | None = None,
    seed: int | None = None,
    on_progress: Callable[[VerifyProgress], None] | None = None,
    bucket: Bucket | None = None,
    state: State | None = None,
) -> VerifySummary:
    """Check one batch (``batch_id``) or, without it, every batch of the configured target:
    HEAD and compare, ``deep`` reads every object back, ``sample`` N of them at random."""
    settings.require("database_url", *(() if batch_id else _target_settings(settings)))
    with _using(settings, state) as st:
        return verify(
            settings,
            st,
            batch_id=batch_id,
            all_batches=batch_id is None,
            deep=deep,
            sample=sample,
            seed=seed,
            on_progress=on_progress,
            bucket=bucket,
        )


def rollback_batch(
    settings: Settings,
    batch_id: str,
    *,
    dry_run: bool = False,
    on_progress: Callable[[RollbackProgress], None] | None = None,
    bucket: Bucket | None = None,
    state: State | None = None,
) -> RollbackSummary:
    """Delete the objects the batch wrote that still hold its SHA-256, in the batch's own
    bucket; ``dry_run`` only asks the bucket what would be deleted and changes nothing."""
    settings.require("database_url")
    with _using(settings, state) as st:
        return rollback(
            settings, st, batch_id, dry_run=dry_run, on_progress=on_progress, bucket=bucket
        )


def list_batches(settings: Settings, *, state: State | None = None) -> list[BatchOverview]:
    """Every batch, oldest first, with its progress, verification and queue state (no files)."""
    with _using(settings, state) as st:
        batches = st.list_batches()
        progress = {p.batch_id: p for p in progress_snapshot(st)}
        problems = st.verify_problem_counts()
        queued = _queued(st)
    return [
        BatchOverview(
            b,
            progress[b.batch_id],
            verify_problems=problems.get(b.batch_id, {}),
            queued=b.batch_id in queued,
        )
        for b in batches
        if b.batch_id in progress
    ]


def batch_status(
    settings: Settings, batch_id: str, *, with_files: bool = False, state: State | None = None
) -> BatchOverview:
    """One batch (``BatchNotFound`` when unknown), its progress, and with ``with_files`` every
    ledger row of it in order."""
    with _using(settings, state) as st:
        batch = st.get_batch(batch_id)
        (progress,) = progress_snapshot(st, batch_id)
        files = st.batch_files(batch_id) if with_files else []
        problems = st.verify_problem_counts().get(batch_id, {})
        queued = batch_id in _queued(st)
    return BatchOverview(batch, progress, files, verify_problems=problems, queued=queued)


def enqueue_batch(settings: Settings, batch_id: str, *, state: State | None = None) -> Enqueued:
    """Hand the batch to the ``r2migrate worker`` processes: one job in the queue in
    PostgreSQL, unless one already waits or runs. Its failed files get a new round first."""
    from r2migrate import worker  # procrastinate is imported only by those who queue

    with _using(settings, state) as st:
        st.get_batch(batch_id)  # BatchNotFound before anything is queued
        queued = worker.queue_batch(settings, st, batch_id)
        return Enqueued(batch_id=batch_id, queued=queued, jobs=worker.job_counts(st))


def _queued(state: State) -> set[str]:
    from r2migrate import worker  # procrastinate is imported only by those who queue

    return worker.queued_batches(state)


def _target_settings(settings: Settings) -> tuple[str, ...]:
    """What acting on "every batch of the configured target" needs the settings to name."""
    return (*settings.source_settings, "bucket_name")
