"""The uploads this server runs in the background: one thread per batch, stoppable, watched.

Must never decide what to upload: a runner calls ``service.run_batches`` for one batch (through
the ``work`` callable it is given) and only records how that ended, for ``GET /batches/{id}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from r2migrate.api.handlers import error_out, internal_error
from r2migrate.api.schemas import ErrorOut, JobOut
from r2migrate.errors import BatchBusy, Interrupted, ToolkitError
from r2migrate.stages.transfer import RunSummary

__all__ = ["JOIN_ON_SHUTDOWN_S", "JobRegistry", "Work"]

log = logging.getLogger(__name__)

JOIN_ON_SHUTDOWN_S = 30.0  # then the lease of an unfinished upload expires and HEAD decides

# ``work(stop)`` runs one batch and stops once ``stop`` is set.
Work = Callable[[threading.Event], RunSummary]
# ``uploaded_so_far()`` reads from the ledger how many files the runner recorded as uploaded.
Count = Callable[[], int]


@dataclass
class _Job:
    batch_id: str
    stop: threading.Event
    started_at: datetime
    thread: threading.Thread | None = None
    finished_at: datetime | None = None
    outcome: str = "running"
    uploaded: int = 0
    failed: int = 0
    error: ErrorOut | None = None

    def view(self) -> JobOut:
        state = self.outcome
        if state == "running" and self.stop.is_set():
            state = "stopping"
        return JobOut(
            state=state,  # type: ignore[arg-type]  # one of JobOut.state's values
            started_at=self.started_at,
            finished_at=self.finished_at,
            uploaded=self.uploaded,
            failed=self.failed,
            error=self.error,
        )


def _count(uploaded_so_far: Count, batch_id: str) -> int:
    try:
        return max(0, uploaded_so_far())
    except ToolkitError as exc:  # the database went away too: say 0 rather than fail the job
        log.warning("counting the uploads of %s: %s", batch_id, exc.message)
        return 0


class JobRegistry:
    """The runners this server started, one per batch at most; each gets its own State."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._scrub = scrub

    def start(self, batch_id: str, work: Work, *, uploaded_so_far: Count | None = None) -> JobOut:
        """Start ``work`` in a thread; BatchBusy when this server already runs the batch.

        A run that ends early (stopped, or failed mid-way) has no summary; ``uploaded_so_far``
        then says how many files it uploaded, so the job does not report 0 after hundreds.
        """
        with self._lock:
            current = self._jobs.get(batch_id)
            if current is not None and current.outcome == "running":
                raise BatchBusy(
                    f"Batch {batch_id} is already being processed by this server.",
                    hint=f"Watch it with GET /batches/{batch_id}, or stop it with "
                    f"POST /batches/{batch_id}/stop.",
                )
            job = _Job(batch_id, threading.Event(), datetime.now(UTC))
            job.thread = threading.Thread(
                target=self._work,
                args=(job, work, uploaded_so_far),
                name=f"r2migrate-run-{batch_id}",
                daemon=True,
            )
            self._jobs[batch_id] = job
            job.thread.start()
            return job.view()

    def _work(self, job: _Job, work: Work, uploaded_so_far: Count | None) -> None:
        outcome, error, uploaded, failed = "failed", None, 0, 0
        try:
            summary = work(job.stop)
            outcome, uploaded, failed = "completed", summary.uploaded, summary.failed
            uploaded_so_far = None  # the summary's count is exact
        except Interrupted as exc:
            outcome, error = "interrupted", error_out(exc, self._scrub)
        except ToolkitError as exc:
            log.warning("processing %s failed: %s", job.batch_id, exc.message)
            error = error_out(exc, self._scrub)
        except Exception:
            log.exception("processing %s failed unexpectedly", job.batch_id)
            error = internal_error()
        if uploaded_so_far is not None:
            uploaded = _count(uploaded_so_far, job.batch_id)
        with self._lock:
            job.outcome, job.error, job.uploaded, job.failed = outcome, error, uploaded, failed
            job.finished_at = datetime.now(UTC)

    def view(self, batch_id: str) -> JobOut | None:
        with self._lock:
            job = self._jobs.get(batch_id)
            return job.view() if job is not None else None

    def views(self) -> dict[str, JobOut]:
        """Every runner this server started, by batch id."""
        with self._lock:
            return {batch_id: job.view() for batch_id, job in self._jobs.items()}

    def running(self, batch_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(batch_id)
            return job is not None and job.outcome == "running"

    def stop(self, batch_id: str) -> JobOut | None:
        """Ask the runner to finish its uploads in flight and stop (the library's ``stop``)."""
        with self._lock:
            job = self._jobs.get(batch_id)
            if job is None:
                return None
            job.stop.set()
            return job.view()

    def stop_all(self, timeout_s: float = JOIN_ON_SHUTDOWN_S) -> bool:
        """Stop every runner and wait up to ``timeout_s`` in all; True when all have ended."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            for job in jobs:
                while job.thread is not None and job.thread.is_alive() and not deadline.is_set():
                    job.thread.join(0.1)
        finally:
            timer.cancel()
        return all(j.thread is None or not j.thread.is_alive() for j in jobs)
