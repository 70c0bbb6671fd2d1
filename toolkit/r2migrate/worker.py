"""Batches as procrastinate jobs: what `r2migrate worker` runs, on one machine or many.

Every batch with work left is one job of the task ``r2migrate.run_batch`` in procrastinate's
tables, which live in the toolkit's own schema (``state_schema``) beside the ledger. The job's
``lock`` and ``queueing_lock`` are the batch id, so a batch is queued once and run by one job at
a time. `r2migrate worker` queues the batches, then runs ``processes`` worker processes; each
is a procrastinate worker taking up to ``JOBS_PER_PROCESS`` jobs at once and sending their files
through one shared pool of ``workers`` threads (so its keep-alive connections outlive a batch).

Procrastinate gives heartbeats and the worker registry; this module adds the stalled-job check
that every worker process runs (procrastinate leaves it to the application): a job whose worker
has sent no heartbeat for ``stalled_worker_s`` goes back to the queue, and another worker picks
it up. The queue only says which batch to work on; the per-file ledger decides what is still to
send: a dead worker's claimed files are taken over through their leases (at once on the same
host; from another once its heartbeat is ``stalled_worker_s`` old, since a worker's lease owner
id names its procrastinate worker), and an upload whose outcome is unknown is settled by HEAD
before anything is sent again.

Must never decide by itself that a file is sent: a job's outcome is only the batch summary; what
was uploaded is what the ledger records. Never deletes a queued job of a batch with work left
(only jobs that succeeded are removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.job_context import JobContext
from procrastinate.worker import Worker

from r2migrate.errors import (
    BatchRolledBack,
    BucketUnavailable,
    Interrupted,
    SourceUnavailable,
    TargetMismatch,
    ToolkitError,
)
from r2migrate.rules import binding
from r2migrate.runtime.supervisor import Supervisor
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.transfer import (
    ErrorPayload,
    Sender,
    check_bucket,
    error_payload,
    init_child_process,
    rebuild_error,
    send_batches,
)
from r2migrate.store.ledger import (
    Batch,
    BatchStatus,
    State,
    new_owner_id,
)
from r2migrate.store.ledger import procrastinate_version as procrastinate_version
from r2migrate.store.queue import QueueStatus, translate_queue_errors

log = logging.getLogger(__name__)

TASK_NAME = "r2migrate.run_batch"
JOBS_PER_PROCESS = 2  # a second batch fills the threads while the first one's last files finish
OUTAGE_RETRIES = 4  # an endpoint outage: the batch job is retried this often, with backoff


def make_app(settings: Settings) -> procrastinate.App:
    """A procrastinate App whose connections see only the toolkit's schema (its queue tables)."""
    settings.require("database_url")
    connector = procrastinate.PsycopgConnector(
        conninfo=settings.database_url,
        kwargs={
            # quoted: the schema is a checked identifier, and may hold capitals
            "options": f'-c search_path="{settings.state_schema}"',
            "application_name": "r2migrate-worker",
        },
        min_size=1,
        max_size=4,
        # How long a query waits for a connection. psycopg_pool's default (30 s) made a worker
        # that lost PostgreSQL take a minute to exit (the job's status, then the worker's
        # unregistration, each waited in full): one heartbeat interval is enough.
        timeout=max(1.0, settings.stalled_worker_s / 3),
    )
    app = procrastinate.App(connector=connector)
    app.task(
        name=TASK_NAME,
        pass_context=True,
        retry=procrastinate.RetryStrategy(
            max_attempts=OUTAGE_RETRIES,
            exponential_wait=2,  # waits 2, 4, 8, 16 s
            retry_exceptions={BucketUnavailable, SourceUnavailable},
        ),
    )(_run_batch_job)
    return app


def require_queue_schema(state: State) -> None:
    """The queue's tables as this procrastinate needs them; reads only (see State.require_queue)."""
    state.require_queue()


def ensure_queue_schema(state: State) -> None:
    """Create or upgrade the ledger with its queue (needs CREATE), then check the queue."""
    state.migrate()
    require_queue_schema(state)


def queued_batches(state: State) -> set[str]:
    """Batch ids that have a job waiting or running."""
    return state.queued_batch_ids(TASK_NAME)


def enqueue_batches(
    app: procrastinate.App, settings: Settings, state: State, *, retry_failed: bool = False
) -> list[str]:
    """Queue one job for each batch of the configured target with files to send that has no job
    waiting or running (batches of other targets are left for workers configured for them).

    With `retry_failed` (a worker starting), failed files first get a new round of attempts, as
    `r2migrate run` gives them; otherwise a batch whose only files left have failed is not
    queued, so a worker does not retry the same failures forever.
    """
    added = []
    with state.queue_lock():
        busy = queued_batches(state)
        mine, _ = binding.split_by_binding(settings, state.batches_to_run())
        for batch in mine:
            if retry_failed:  # even for a queued batch: its job takes them when it runs
                state.requeue_failed(batch.batch_id)
            if batch.batch_id in busy:
                continue
            if batch.status in (
                BatchStatus.PARTIAL,
                BatchStatus.FAILED,
            ) and not state.open_file_count(batch.batch_id):
                continue  # only failed files are left: they wait for the next start
            if _defer(app, batch):
                added.append(batch.batch_id)
    if added:
        log.info("queued %d batch job(s): %s", len(added), ", ".join(added[:5]))
    return added


def queue_batch(settings: Settings, state: State, batch_id: str) -> bool:
    """Queue one batch for the workers (the API's ``POST /batches/{id}/enqueue``); False when
    a job for it already waits or runs."""
    require_queue_schema(state)
    app = make_app(settings)
    with translate_queue_errors(f"queueing batch {batch_id}", settings), app.open():
        return enqueue_batch(app, state, batch_id)


def enqueue_batch(app: procrastinate.App, state: State, batch_id: str) -> bool:
    """Queue one batch (the API's ``POST /batches/{id}/enqueue``); False when a job for it is
    already waiting or running. Its failed files get a new round of attempts first."""
    batch = state.get_batch(batch_id)  # BatchNotFound before anything is queued
    if batch.status is BatchStatus.ROLLED_BACK:
        raise BatchRolledBack(f"Batch {batch_id} was rolled back; it cannot be queued.")
    state.requeue_failed(batch_id)
    with state.queue_lock():
        if batch_id in queued_batches(state):
            return False
        return _defer(app, batch)


def _defer(app: procrastinate.App, batch: Batch) -> bool:
    # The queue is the batch's target and source: only workers configured for them take it.
    batch_id = batch.batch_id
    try:
        app.tasks[TASK_NAME].configure(
            queue=binding.queue_name(batch.target, batch.source),
            lock=batch_id,
            queueing_lock=batch_id,
        ).defer(batch_id=batch_id)
    except pexc.AlreadyEnqueued:
        return False  # another worker queued it a moment ago
    return True


def job_counts(state: State) -> dict[str, int]:
    """Jobs of this task by status (todo, doing, succeeded, failed, ...)."""
    return state.job_counts(TASK_NAME)


def queue_status(state: State, stalled_worker_s: float) -> QueueStatus | None:
    """The job queue as `doctor` shows it; None when no worker has made the queue yet. Reads
    only."""
    return state.queue_status(TASK_NAME, stalled_worker_s)


# -- one worker process ---------------------------------------------------------------------------


@dataclass
class _Engine:
    """What a worker process keeps between jobs: its sender, thread pool and connections."""

    settings: Settings
    stop: threading.Event
    inbox: Any  # multiprocessing queue to the parent, or None in-process
    keep_going: bool = True  # False for `--once`: an outage ends the worker instead of waiting
    sender: Any = None
    pool: ThreadPoolExecutor | None = None
    worker: Worker | None = None  # its id names this engine's lease owners (see run_batch)
    states: queue.SimpleQueue[State] = field(default_factory=queue.SimpleQueue)

    def open(self) -> None:
        self.sender = Sender(self.settings, Bucket(self.settings), self.stop)
        self.pool = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="r2m-put"
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.sender is not None:
            self.sender.close()
        while True:
            try:
                self.states.get_nowait().close()
            except queue.Empty:
                break

    @contextlib.contextmanager
    def state(self) -> Iterator[State]:
        """One ledger connection per job running at once, reused across jobs."""
        try:
            st = self.states.get_nowait()
        except queue.Empty:
            st = State.open(
                self.settings.database_url,
                schema=self.settings.state_schema,
                migrate=False,
                require_ledger=True,
            )
        try:
            yield st
        except BaseException:
            st.close()  # its transaction state is unknown: do not hand it to the next job
            raise
        else:
            self.states.put(st)

    def run_batch(self, batch_id: str) -> dict[str, Any]:
        if self.stop.is_set():  # the batch stays queued-able: the next worker takes it
            return {"batch_id": batch_id, "status": "not started: the worker is stopping"}
        with self.state() as st:
            batch = st.get_batch(batch_id)
            try:  # the queue name says so already; the ledger has the last word
                binding.settings_for_batch(self.settings, batch)
            except TargetMismatch as exc:
                log.error("batch %s is not this worker's to run: %s", batch_id, exc.message)
                return {"batch_id": batch_id, "status": "not run: bound to another target"}
            if batch.status is BatchStatus.ROLLED_BACK:
                return {"batch_id": batch_id, "status": "not run: rolled back"}
            # A job runs when its batch was queued or its outage retry came due: files that failed
            # meanwhile (an outage marks them failed) get a new round, as `r2migrate run` gives.
            st.requeue_failed(batch_id)
            # The owner names this procrastinate worker: when its heartbeat stops, any other
            # worker releases its file leases with its jobs (State.release_dead_worker_leases)
            # instead of waiting lease_s for them.
            worker_id = self.worker.worker_id if self.worker is not None else None
            results = send_batches(
                self.settings,
                st,
                [batch_id],
                self.sender,
                self.stop,
                None,
                pool=self.pool,
                owner=new_owner_id(worker_id),
            )
        result = results[0] if results else None
        if result is None:
            return {"batch_id": batch_id, "status": "nothing to do"}
        if self.inbox is not None:
            self.inbox.put(("result", result))
        return {
            "batch_id": batch_id,
            "status": result.status.value,
            "uploaded": result.uploaded,
            "failed": result.failed,
            "conflict": result.conflict,
        }


_ENGINE_KEY = "r2migrate_engine"


def _run_batch_job(context: JobContext, batch_id: str) -> dict[str, Any]:
    """The task: send what the ledger says is left of one batch."""
    engine: _Engine = context.additional_context[_ENGINE_KEY]
    try:
        return engine.run_batch(batch_id)
    except ToolkitError as exc:
        if isinstance(exc, (BucketUnavailable, SourceUnavailable)) and engine.keep_going:
            raise  # an outage: procrastinate retries the job with backoff (see make_app)
        # Wrong settings or credentials fail every batch alike (and `--once` does not wait out
        # an outage): stop this worker and say why.
        if engine.inbox is not None and not isinstance(exc, Interrupted):
            engine.inbox.put(("error", error_payload(exc)))
        engine.stop.set()
        raise
    except Exception as exc:
        # A bug, not a condition: say so once and stop, rather than re-run the batch forever.
        log.exception("batch %s: unexpected error", batch_id)
        if engine.inbox is not None:
            engine.inbox.put(("error", _unexpected(exc)))
        engine.stop.set()
        raise


def _unexpected(exc: BaseException) -> ErrorPayload:
    return (
        "ToolkitError",
        f"Unexpected error in a worker process: {type(exc).__name__}: {exc}",
        "The log file has the traceback; please report it.",
        1,
    )


def retry_stalled_jobs(app: procrastinate.App, state: State, stalled_worker_s: float) -> list[str]:
    """Send back to the queue the batch jobs of workers that stopped sending heartbeats, and
    release their file leases.

    Procrastinate records heartbeats but leaves this check to the application: every
    `r2migrate worker` runs it, so a machine that dies has its batches taken by the others,
    and its files with them (settled by HEAD) rather than after ``lease_s``.
    """
    state.release_dead_worker_leases(stalled_worker_s)
    with state.queue_lock():
        retried = []
        for job in state.stalled_jobs(TASK_NAME, stalled_worker_s):
            try:
                app.job_manager.retry_job_by_id(job.job_id, retry_at=datetime.now(UTC))
            except pexc.ProcrastinateException as exc:  # it ended between the look and now
                log.warning("batch %s: its stalled job was not queued again: %s", job.batch_id, exc)
                continue
            retried.append(job.batch_id)
            log.warning(
                "batch %s: its worker sent no heartbeat for %.0f s; the batch is queued again",
                job.batch_id,
                stalled_worker_s,
            )
    return retried


async def _serve(
    app: procrastinate.App, engine: _Engine, *, wait: bool, halt: Any, name: str
) -> None:
    settings = engine.settings
    worker = Worker(
        app,
        name=name,
        concurrency=JOBS_PER_PROCESS,
        wait=wait,
        # Its own target's queue, and "default", where r2migrate before version 2 of the ledger
        # queued every batch (run_batch turns away one bound elsewhere; its worker re-queues it).
        queues=[
            binding.queue_name(binding.target_of(settings), binding.source_of(settings)),
            "default",
        ],
        install_signal_handlers=False,
        update_heartbeat_interval=settings.stalled_worker_s / 3,
        stalled_worker_timeout=settings.stalled_worker_s,
        fetch_job_polling_interval=min(5.0, settings.stalled_worker_s / 3),
        additional_context={_ENGINE_KEY: engine},
        delete_jobs="successful",
    )
    engine.worker = worker

    async def watch() -> None:
        """Stop taking jobs on the parent's halt (Ctrl-C) or a fatal error in a job, and keep
        the heartbeat going until the last running job has ended.

        Procrastinate stops its own heartbeat before it waits for the running jobs (at every
        stop, and with `--once` as soon as the queue looks empty), and does not notice when its
        heartbeat task dies: either way, other workers would take a live batch for a dead one.
        """
        every_s = settings.stalled_worker_s / 3
        last_ok = next_beat = time.monotonic()
        stopping = False
        while True:
            if stopping or (halt is not None and halt.is_set()) or engine.stop.is_set():
                stopping = True
                engine.stop.set()  # running batches stop once their in-flight uploads are recorded
                # Again at every turn: procrastinate's run() clears a stop that came before it
                # started, and a lost stop would keep this process alive after the parent left.
                worker.stop()  # type: ignore[no-untyped-call]
            now = time.monotonic()
            if now >= next_beat and worker.worker_id is not None:
                next_beat = now + every_s
                try:
                    await app.job_manager.update_heartbeat(worker.worker_id)
                    last_ok = now
                except Exception as exc:
                    log.warning("could not send this worker's heartbeat: %s", exc)
                if now - last_ok > settings.stalled_worker_s and not engine.stop.is_set():
                    log.error(
                        "no heartbeat for %.0f s: other workers may take this worker's batches; "
                        "stopping",
                        now - last_ok,
                    )
                    engine.stop.set()
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        await worker.run()  # type: ignore[no-untyped-call]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def serve(settings: Settings, *, wait: bool, halt: Any = None, inbox: Any = None) -> None:
    """Run one procrastinate worker in this process until stopped (or, without `wait`, until
    the queue is empty)."""
    stop = threading.Event()
    engine = _Engine(settings, stop, inbox, keep_going=wait)
    engine.open()
    app = make_app(settings)

    async def main() -> None:
        async with app.open_async():
            await _serve(
                app, engine, wait=wait, halt=halt, name=multiprocessing.current_process().name
            )

    try:
        with translate_queue_errors("running batch jobs", settings):
            asyncio.run(main())
    finally:
        engine.close()


def _worker_process_main(settings: Settings, wait: bool, halt: Any, inbox: Any) -> None:
    """A spawned worker process: Ctrl-C goes to the parent, which sets `halt`."""
    init_child_process(settings)
    quiet_procrastinate()
    try:
        serve(settings, wait=wait, halt=halt, inbox=inbox)
    except ToolkitError as exc:
        inbox.put(("error", error_payload(exc)))
    except Exception as exc:
        log.exception("worker process failed")
        inbox.put(("error", _unexpected(exc)))


QUIET_LOGGERS = ("procrastinate", "psycopg.pool", "asyncio")


def quiet_procrastinate() -> None:
    """Procrastinate's records, its connection pool's and asyncio's (warnings and up) go to the
    toolkit's log file, through its secret filter, and not to the console: while PostgreSQL is
    down they repeat, with tracebacks, an error the worker reports in one clear line."""
    files = [
        h for h in logging.getLogger("r2migrate").handlers if isinstance(h, logging.FileHandler)
    ]
    for name in QUIET_LOGGERS:
        theirs = logging.getLogger(name)
        theirs.handlers = list(files)
        theirs.propagate = False
        theirs.setLevel(logging.WARNING)


# -- the `r2migrate worker` command ---------------------------------------------------------------


@dataclass
class WorkerSummary:
    results: list[Any] = field(default_factory=list)
    restarts: int = 0

    @property
    def uploaded(self) -> int:
        """Files whose bytes were sent (not those settled by HEAD)."""
        return sum(r.uploaded for r in self.results)

    @property
    def resolved_by_head(self) -> int:
        return sum(r.resolved_by_head for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.failed + r.conflict for r in self.results)


def _poll(
    app: procrastinate.App,
    settings: Settings,
    state: State,
    sup: Supervisor,
    summary: WorkerSummary,
    *,
    once: bool,
) -> bool:
    """One round of `run_workers`: queue batches planned meanwhile, send stalled jobs back,
    restart worker processes; False once `--once` has nothing left to wait for."""
    with translate_queue_errors("queueing batches", settings), app.open():
        enqueue_batches(app, settings, state)
        retry_stalled_jobs(app, state, settings.stalled_worker_s)
    waiting = job_counts(state).get("todo", 0)
    for ended in sup.reap():
        if not ended.ok:
            log.warning(
                "worker process %s died (exit %s); starting another", ended.name, ended.exitcode
            )
            summary.restarts += 1
            sup.restart(ended.index)
    if waiting or not once:  # --once: a process that found the queue empty stays ended
        for index in sup.idle():
            sup.restart(index)
    # --once ends when nothing waits or runs; a job still "doing" with every process here
    # gone belongs to a dead worker (or one elsewhere): wait for it.
    idle = not waiting and not sup.alive()
    return not (once and idle and not job_counts(state).get("doing"))


def run_workers(
    settings: Settings,
    *,
    processes: int,
    once: bool,
    poll_s: float,
    stop: threading.Event,
) -> WorkerSummary:
    """Queue the batches and run `processes` worker processes until `stop` (or, with `once`,
    until no batch job is waiting or running).

    Every `poll_s` it queues batches planned meanwhile and restarts a worker process that died
    (its job is queued again by the stalled-job check once its heartbeat is `stalled_worker_s`
    old). Raises the first fatal error a worker reports (wrong credentials, say) after stopping
    the others, and Interrupted when `stop` is set. A second Ctrl-C kills the processes: their
    leases (dead pids) and jobs (no heartbeat) are taken over, each upload settled by HEAD.
    """
    check_bucket(Bucket(settings), settings, stop)
    quiet_procrastinate()  # this process queues jobs through procrastinate's pool too
    app = make_app(settings)
    summary = WorkerSummary()
    errors: list[ErrorPayload] = []

    def take(kind: str, payload: Any) -> None:
        if kind == "result":
            summary.results.append(payload)
        elif kind == "error":
            errors.append(payload)
            sup.halt.set()

    with State.open(
        settings.database_url, schema=settings.state_schema, migrate=False, require_ledger=True
    ) as state:
        require_queue_schema(state)
        with translate_queue_errors("queueing batches", settings), app.open():
            enqueue_batches(app, settings, state, retry_failed=True)

        # If this process fails (it lost PostgreSQL, say), the workers must not outlive it
        # unseen, and one that does not stop must not keep it waiting for ever: grace_s.
        sup = Supervisor(
            _worker_process_main,
            (settings, not once),
            count=processes,
            name="r2migrate-worker",
            stop=stop,
            on_message=take,
            grace_s=max(30.0, settings.stalled_worker_s),
            on_interrupt="kill",
        )
        with sup:
            log.info("worker: %d process(es) x %d thread(s)", processes, settings.workers)
            sup.run(
                tick_s=min(poll_s, settings.stalled_worker_s / 3),
                on_tick=lambda: _poll(app, settings, state, sup, summary, once=once),
            )
    first_error = rebuild_error(errors[0]) if errors else None
    if first_error is not None and not isinstance(first_error, Interrupted):
        raise first_error
    if stop.is_set():
        raise Interrupted(
            "Interrupted; every finished upload is recorded.",
            hint="Start `r2migrate worker` again: it queues every batch with work left.",
        )
    return summary
