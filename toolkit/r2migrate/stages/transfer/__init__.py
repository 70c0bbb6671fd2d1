"""Stage 3: run batches. Claim files, hash, create-only PUT with SHA-256, retry, record, resume.

Must not choose which files to migrate or compute keys (plan did); it only sends what the ledger
holds, writing the intent (`uploading`) before each PUT and the outcome after it.

The package, one concern per module:

* ``sender``: one claimed file, in a worker thread (read, hash, PUT, settle by HEAD);
* ``scheduler``: ``BatchScheduler``, one runner's loop (claim, submit, record in groups);
* ``processes``: several upload processes over the same batches;
* ``results``: what a run reports (``BatchResult``, ``RunSummary``; ``Progress``, an alias);
* this module: ``run``, the stage's entry point, and its preflight checks.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from r2migrate.errors import BatchRolledBack, BucketUnavailable, Interrupted, SourceChanged
from r2migrate.media.base import open_media_source
from r2migrate.rules import binding
from r2migrate.runtime.retry import retry_transient
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.transfer.processes import (
    ErrorPayload,
    die_with_parent,
    error_payload,
    init_child_process,
    rebuild_error,
    run_processes,
)
from r2migrate.stages.transfer.results import BatchResult, Progress, RunSummary
from r2migrate.stages.transfer.scheduler import BatchScheduler, send_batches
from r2migrate.stages.transfer.sender import PART_WORKERS, Sender
from r2migrate.store import catalog
from r2migrate.store.ledger import Batch, BatchStatus, State

__all__ = [
    "AUTO_PROCESSES_MIN_FILES",
    "PART_WORKERS",
    "BatchResult",
    "BatchScheduler",
    "ErrorPayload",
    "Progress",
    "RunSummary",
    "Sender",
    "SourceChanged",
    "StageProgress",
    "check_bucket",
    "check_source_reachable",
    "die_with_parent",
    "error_payload",
    "init_child_process",
    "process_count",
    "rebuild_error",
    "run",
    "send_batches",
]

log = logging.getLogger(__name__)


def run(
    settings: Settings,
    state: State,
    *,
    batch_id: str | None = None,
    resume: bool = False,
    max_batches: int | None = None,
    bucket: Bucket | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[StageProgress], None] | None = None,
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
    settings, batches, left_out = _batches_to_run(settings, state, batch_id, max_batches)
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
        summary = run_processes(
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
            hint=f"Resume with `r2migrate run --batch {where}`.",
        )
    return RunSummary(
        tuple(results),
        elapsed_s=time.monotonic() - started,
        left_out_note=binding.left_out_note(left_out),
    )


def _batches_to_run(
    settings: Settings, state: State, batch_id: str | None, max_batches: int | None
) -> tuple[Settings, Sequence[Batch], Sequence[Batch]]:
    """The batches a run sends, the settings bound to them, and the batches it leaves out.

    The batches' own target and source decide where bytes go and come from; settings that
    name another are refused (one batch) or leave those batches out (all of them).
    """
    if batch_id is not None:
        batch = state.get_batch(batch_id)
        if batch.status is BatchStatus.ROLLED_BACK:
            raise BatchRolledBack(
                f"Batch {batch_id} was rolled back; its files are no longer in the bucket and "
                "running it again would not bring them back under this batch."
            )
        return binding.settings_for_batch(settings, batch), [batch], ()
    batches, left_out = binding.split_by_binding(settings, state.batches_to_run())
    if max_batches is not None:
        batches = batches[:max_batches]
    if left_out:
        log.warning("%s", binding.left_out_note(left_out))
    return settings, batches, left_out


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
