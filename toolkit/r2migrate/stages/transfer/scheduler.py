"""One runner's loop over batches: claim files, hand them to the sender's threads, record outcomes.

Must not read a source or talk to the bucket itself (the Sender does, in worker threads); it is the
only part of the transfer stage that writes the ledger, in groups, from the calling thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import UTC, datetime

from r2migrate.errors import BucketUnavailable, SourceRefused, SourceUnavailable
from r2migrate.runtime.pool import collect_finished
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.recorder import (
    FLUSH_EVERY_S,
    FailureStreak,
    GroupedWrites,
    write_back_done,
    write_back_status,
)
from r2migrate.stages.transfer.results import BatchResult, BatchRun
from r2migrate.stages.transfer.sender import SOURCE_UNAVAILABLE, Sender
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


class BatchScheduler:
    """Sends every open file of some batches, in order, through one pool of worker threads.

    `pool` lets several schedulers share one long-lived pool (a worker process running batch
    jobs side by side keeps its threads, and so their keep-alive connections); by default the
    scheduler makes its own. `owner` is the lease owner id (a worker's names its procrastinate
    worker, so its leases end with its heartbeat); by default a new one for this process.

    Batches are pipelined: once a batch has nothing left to claim, the next one's files are
    claimed while the last uploads of the first are still in flight, so the workers never wait
    for a batch to drain. A batch gets its final status once its last file is recorded, unless
    another runner still holds some of its files: those are waited for, or taken over when the
    holder is dead (same host) or its lease has expired.
    """

    def __init__(
        self,
        settings: Settings,
        state: State,
        sender: Sender,
        stop: threading.Event,
        on_progress: Callable[[StageProgress], None] | None = None,
        *,
        pool: ThreadPoolExecutor | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.sender = sender
        self.stop = stop
        self.on_progress = on_progress
        self.owner = owner or new_owner_id()
        self._own_pool = pool is None
        self.pool = pool or ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="r2m-put"
        )
        self.pending: list[str] = []
        self.runs: dict[str, BatchRun] = {}  # started, not yet finished
        self.results: list[BatchResult] = []
        self.claiming: BatchRun | None = None
        self.writes = GroupedWrites[tuple[Outcome, FileRecord]](self._write)
        self.in_flight: dict[Future[Outcome], FileRecord] = {}
        self.last_renew = time.monotonic()
        self.streak = FailureStreak(settings.workers)
        self.outage: str | None = None
        self.outage_code = ""
        self.refused: SourceRefused | None = None  # 401/403 from the media server: every file
        # Claim in groups: top the window up only once it has drained to the workers' count, so
        # a claim (one round trip) takes about `workers` files instead of the one or two just
        # finished.
        self.window = max(2, settings.workers * 2)
        self.low_water = max(1, settings.workers)
        self.done_queue: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()

    def run(self, batch_ids: Sequence[str]) -> list[BatchResult]:
        """Send the batches; raises SourceRefused, or BucketUnavailable/SourceUnavailable when
        the endpoint (or media server) failed every recent request."""
        self.pending = list(batch_ids)
        try:
            while self._step():
                pass
        except KeyboardInterrupt:
            self._wait_after_interrupt()
        finally:
            self._release()
        for run in list(self.runs.values()):
            # Started but not finished: interrupted, or the endpoint is down.
            if self.state.open_file_count(run.batch_id) == 0:
                self._finish(run, *close_batch(self.state, run.batch_id, run.failures))
                continue
            self.state.set_batch_status(
                run.batch_id, BatchStatus.PARTIAL, last_error=self.outage or "interrupted"
            )
            self._finish(run, BatchStatus.PARTIAL)
        self._raise_if_stopped_by_the_endpoint(batch_ids)
        order = {batch_id: i for i, batch_id in enumerate(batch_ids)}
        return sorted(self.results, key=lambda r: order[r.batch_id])

    # -- the loop ---------------------------------------------------------------------------

    def _step(self) -> bool:
        """One turn: claim, settle finished batches, collect outcomes, flush. False: done."""
        active = not self.stop.is_set() and self.outage is None
        if active and self._claim() == 0:
            return True  # go on with the next batch at once
        if self.stop.is_set() or self.refused is not None:
            for rec in give_back_unstarted(self.state, self.in_flight, self.owner):
                self.runs[rec.batch_id].in_flight -= 1
        wake = self._settle() if active else None
        if wake is not None and not self.in_flight and not self.pending:
            if all(r.exhausted for r in self.runs.values()):
                # Only files that other runners hold are left: give them time.
                self.stop.wait(max(0.0, wake - time.monotonic()))
            return True
        if not self.in_flight and (not active or (not self.runs and not self.pending)):
            return False
        for fut in collect_finished(self.done_queue, timeout_s=FLUSH_EVERY_S):
            if fut in self.in_flight:  # else cancelled by give_back_unstarted: handed back
                self._collect(fut, self.in_flight.pop(fut))
        self.writes.maybe_flush()
        now = time.monotonic()
        if now - self.last_renew >= self.settings.lease_s / 3:
            self.state.renew_leases(
                [r.id for r in self.in_flight.values()],
                owner=self.owner,
                lease_s=self.settings.lease_s,
            )
            self.last_renew = now
        return True

    def _claim(self) -> int | None:
        """Top up the files in flight from the batch being claimed; the number claimed (0 once
        the batch has nothing more to claim), or None when no claim was made (the window is
        full enough, or nothing is left to start)."""
        if self.claiming is None:
            unexhausted = [r for r in self.runs.values() if not r.exhausted]
            if unexhausted:
                self.claiming = unexhausted[0]
            elif self.pending:
                self.claiming = self._begin(self.pending.pop(0))
        if self.claiming is None or len(self.in_flight) > self.low_water:
            return None
        limit = self.window - len(self.in_flight)
        claimed = self.state.claim_files(
            self.claiming.batch_id, owner=self.owner, limit=limit, lease_s=self.settings.lease_s
        )
        if len(claimed) < limit:
            # Fewer than asked: nothing else is claimable now, so no empty claim to learn it.
            # _settle looks again once this batch's uploads are in (other runners' files).
            self.claiming.exhausted = True
            self.claiming = None
        for rec in claimed:
            fut = self.pool.submit(self.sender.send, rec)
            self.in_flight[fut] = rec
            self.runs[rec.batch_id].in_flight += 1
            fut.add_done_callback(self.done_queue.put)
        # 0: this batch is used up, claim from the next one at once.
        return 0 if self.claiming is None else len(claimed)

    def _collect(self, fut: Future[Outcome], rec: FileRecord) -> None:
        run = self.runs[rec.batch_id]
        run.in_flight -= 1
        try:
            outcome = fut.result()
        except SourceRefused as exc:
            # Stop claiming, let the uploads in flight end, hand this file back as it was, and
            # mark the batch partial; then the error stops the run.
            self.state.release_files([rec.id], owner=self.owner)
            if self.refused is None:
                self.refused, self.outage, self.outage_code = exc, exc.message, "refused"
            return
        self.writes.add((outcome, rec))
        self._tally(run, rec, outcome)
        if self.on_progress is not None:
            self.on_progress(
                StageProgress(
                    run.batch_id,
                    run.done_files,
                    run.files_total,
                    run.done_bytes,
                    run.bytes_total,
                    rec.object_key,
                    outcome.status.value,
                    stage="run",
                )
            )

    def _tally(self, run: BatchRun, rec: FileRecord, outcome: Outcome) -> None:
        run.tally["attempts"] += outcome.attempts_made
        if outcome.status is FileStatus.UPLOADED:
            self.streak.reset()
            if outcome.settled_by_head:
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
            if outcome.retryable and self.streak.failed() and self.outage is None:
                self.outage = outcome.error_message or "every request failed"
                self.outage_code = outcome.error_code or ""
                log.error("stopping: the endpoint keeps failing (%s)", self.outage)

    # -- batches ----------------------------------------------------------------------------

    def _begin(self, batch_id: str) -> BatchRun:
        state = self.state
        state.release_dead_leases(batch_id, stalled_worker_s=self.settings.stalled_worker_s)
        with state.pipelined(f"starting batch {batch_id}"):  # one round trip, not four
            state.set_batch_status(batch_id, BatchStatus.RUNNING)
            current = state.refresh_counts(batch_id)
        log.info(
            "running batch %s: %d file(s), %d bytes",
            batch_id,
            current.total_files,
            current.total_bytes,
        )
        run = BatchRun(
            batch_id=batch_id,
            started=time.monotonic(),
            files_total=current.total_files,
            bytes_total=current.total_bytes,
            done_files=current.uploaded_files + current.skipped_files,
            done_bytes=current.uploaded_bytes,
        )
        self.runs[batch_id] = run
        return run

    def _settle(self) -> float | None:
        """Finish the batches with nothing left anywhere; for the others, which other runners
        still hold files of, return when to look again (None: no batch is waiting)."""
        now = time.monotonic()
        wake: float | None = None
        for run in [r for r in self.runs.values() if r.exhausted and not r.in_flight]:
            if now < run.next_check:
                wake = min(wake or run.next_check, run.next_check)
                continue
            self.writes.flush()
            if self.state.open_file_count(run.batch_id) == 0:
                self._finish(run, *close_batch(self.state, run.batch_id, run.failures))
                continue
            # Claim again at the next look: a dead holder's or an expired lease is claimable.
            self.state.release_dead_leases(
                run.batch_id, stalled_worker_s=self.settings.stalled_worker_s
            )
            run.exhausted = False
            run.next_check = now + min(1.0, self.settings.lease_s / 10)
        return wake

    def _finish(self, run: BatchRun, status: BatchStatus, counts: Batch | None = None) -> None:
        """Report a finished batch; ``counts``: its counters as close_batch just refreshed them."""
        del self.runs[run.batch_id]
        final = counts if counts is not None else self.state.refresh_counts(run.batch_id)
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
        self.results.append(result)

    def _write(self, done: list[tuple[Outcome, FileRecord]]) -> None:
        by_batch: dict[str, list[tuple[Outcome, FileRecord]]] = {}
        for outcome, rec in done:
            by_batch.setdefault(rec.batch_id, []).append((outcome, rec))
        for batch_id, group in by_batch.items():
            self.state.record_outcomes(batch_id, [o for o, _ in group], owner=self.owner)
            if self.settings.write_back:
                _write_back(self.settings, self.state, batch_id, group)

    # -- the end ----------------------------------------------------------------------------

    def _wait_after_interrupt(self) -> None:
        # Let in-flight PUTs finish (they will not retry) so their outcome is recorded; a second
        # Ctrl-C aborts the wait, and the leases + HEAD-on-resume still keep the ledger true.
        self.stop.set()
        give_back_unstarted(self.state, self.in_flight, self.owner)
        log.warning("interrupted: waiting for %d upload(s) in flight", len(self.in_flight))
        for fut, rec in list(self.in_flight.items()):
            try:
                self.writes.add((fut.result(), rec))
            except Exception:
                log.exception("upload of %s ended abnormally", rec.object_key)
        self.in_flight.clear()

    def _release(self) -> None:
        if self._own_pool:
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:  # a shared pool: cancel and wait for this scheduler's own uploads only
            for fut in self.in_flight:
                fut.cancel()
            futures_wait(list(self.in_flight))
        self.writes.flush()
        # Anything still leased by this runner has an unknown outcome (an interrupt hit between
        # a PUT and its record): expire the lease so the next run HEADs it before sending.
        for batch_id in self.runs:
            self.state.expire_leases(batch_id, owner=self.owner)

    def _raise_if_stopped_by_the_endpoint(self, batch_ids: Sequence[str]) -> None:
        if self.refused is not None:
            raise self.refused
        if self.outage is None or self.stop.is_set():
            return
        unfinished = [r.batch_id for r in self.results if r.status is BatchStatus.PARTIAL]
        first = unfinished[0] if unfinished else batch_ids[0]
        resume = f"resume with `r2migrate run --batch {first}`"
        if self.outage_code == SOURCE_UNAVAILABLE:
            raise SourceUnavailable(
                f"Batch {first} stopped: the media server failed every recent request "
                f"({self.outage}).",
                hint=f"Check media_url and that the application serves it, then {resume}.",
            )
        raise BucketUnavailable(
            f"Batch {first} stopped: the S3 endpoint failed every recent request ({self.outage}).",
            hint=f"Check the endpoint, then {resume}.",
        )


def send_batches(
    settings: Settings,
    state: State,
    batch_ids: Sequence[str],
    sender: Sender,
    stop: threading.Event,
    on_progress: Callable[[StageProgress], None] | None,
    *,
    pool: ThreadPoolExecutor | None = None,
    owner: str | None = None,
) -> list[BatchResult]:
    """Send every open file of these batches (see BatchScheduler, which this call runs once)."""
    scheduler = BatchScheduler(settings, state, sender, stop, on_progress, pool=pool, owner=owner)
    return scheduler.run(batch_ids)


def give_back_unstarted(
    state: State, in_flight: dict[Future[Outcome], FileRecord], owner: str
) -> list[FileRecord]:
    """Cancel claimed files whose upload has not started and hand them back as they were."""
    unstarted = [in_flight.pop(fut) for fut in list(in_flight) if fut.cancel()]
    if unstarted:
        state.release_files([rec.id for rec in unstarted], owner=owner)
    return unstarted


def finalize_batch(
    state: State, batch_id: str, failures: Sequence[tuple[str, str, str]]
) -> BatchStatus:
    """Set the batch's final status, unless another runner still holds some of its files."""
    if state.open_file_count(batch_id) > 0:
        return BatchStatus.RUNNING
    return close_batch(state, batch_id, failures)[0]


def close_batch(
    state: State, batch_id: str, failures: Sequence[tuple[str, str, str]]
) -> tuple[BatchStatus, Batch]:
    """finalize_batch once the caller has seen no open file: the final status and the counts
    it refreshed (so reporting the batch needs no second count)."""
    with state.pipelined(f"closing batch {batch_id}"):  # two round trips, not four
        counts = state.refresh_counts(batch_id)
        status = _final_status(counts)
        state.set_batch_status(batch_id, status, last_error=failures[0][2] if failures else None)
    return status, counts


def _final_status(counts: Batch) -> BatchStatus:
    ok = counts.uploaded_files + counts.skipped_files  # uploaded counts verified files too
    return (
        BatchStatus.COMPLETED
        if ok == counts.total_files
        else BatchStatus.PARTIAL
        if ok
        else BatchStatus.FAILED
    )


def _write_back(
    settings: Settings, state: State, batch_id: str, done: Sequence[tuple[Outcome, FileRecord]]
) -> None:
    """Fill the original system's migration columns: the whole set for uploaded files, the
    status alone ('failed', 'conflict') for the others, so none keeps an earlier 'verified'."""
    uploaded = [
        (rec, o.source_sha256, datetime.now(UTC))
        for o, rec in done
        if o.status is FileStatus.UPLOADED
    ]
    write_back_done(settings, state, batch_id, uploaded, FileStatus.UPLOADED)
    for status in (FileStatus.FAILED, FileStatus.CONFLICT):
        others = [rec for o, rec in done if o.status is status]
        if others:
            write_back_status(settings, state, batch_id, others, status)
