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
import psycopg
import psycopg_pool
from procrastinate import exceptions as pexc
from procrastinate.job_context import JobContext
from procrastinate.worker import Worker
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from r2migrate.errors import (
    BatchRolledBack,
    BucketUnavailable,
    DatabaseUnavailable,
    Interrupted,
    SourceUnavailable,
    StateError,
    TargetMismatch,
    ToolkitError,
)
from r2migrate.rules import binding
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
    privilege_error,
    procrastinate_version,
    same_minor,
    translate_db_errors,
)

log = logging.getLogger(__name__)

TASK_NAME = "r2migrate.run_batch"
JOBS_PER_PROCESS = 2  # a second batch fills the threads while the first one's last files finish
OUTAGE_RETRIES = 4  # an endpoint outage: the batch job is retried this often, with backoff


@contextlib.contextmanager
def translate_queue_errors(doing: str, settings: Settings | None = None) -> Iterator[None]:
    """The one place procrastinate's connection errors become the toolkit's; a missing
    privilege is PrivilegeMissing (exit 4) with the GRANT for the role in ``settings``."""
    try:
        yield
    except (pexc.ConnectorException, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, psycopg.errors.InsufficientPrivilege):
            schema, role = "<state_schema>", "<role>"
            if settings is not None and settings.database_url:
                schema = settings.state_schema
                role = str(conninfo_to_dict(settings.database_url).get("user") or role)
            raise privilege_error(cause, doing, schema=schema, role=role) from exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DatabaseUnavailable(f"PostgreSQL failed while {doing}: {first}") from exc


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
    """The queue's tables as this procrastinate needs them; reads only, never creates.

    They are made with the ledger (`r2migrate db upgrade`, the first `plan`, or `db sql`); the
    procrastinate version that made them is kept in ``queue_schema``, and another minor version
    is refused with a clear message instead of running against tables it does not know.
    """
    status = state.require_ledger()
    installed = procrastinate_version()
    made_by = status.queue_version or "?"
    if not same_minor(made_by, installed):
        raise StateError(
            f"The job queue in schema {state.schema!r} was made by procrastinate "
            f"{made_by}; this r2migrate runs procrastinate {installed}.",
            hint="Run workers from the r2migrate that made it. To start the queue "
            "afresh, stop every worker, then drop procrastinate's tables, types and "
            f"functions in schema {state.schema} and {state.schema}.queue_schema.",
        )


def ensure_queue_schema(state: State) -> None:
    """Create or upgrade the ledger with its queue (needs CREATE), then check the queue."""
    state.migrate()
    require_queue_schema(state)


@contextlib.contextmanager
def queue_lock(state: State) -> Iterator[None]:
    """Serialize "look at the queue, then change it" between workers, machines and the API, so
    a batch never gets a second job while its first runs, and a stalled job is retried once."""
    key = f"r2migrate-queue:{state.schema}"
    with translate_db_errors("locking the job queue"):
        state.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        yield
    finally:
        with contextlib.suppress(Exception), translate_db_errors("unlocking the job queue"):
            state.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def queued_batches(state: State) -> set[str]:
    """Batch ids that have a job waiting or running."""
    with translate_db_errors("reading the job queue"):
        rows = state.conn.execute(
            sql.SQL(
                "SELECT DISTINCT lock FROM {s}.procrastinate_jobs"
                " WHERE task_name = %s AND status IN ('todo', 'doing')"
            ).format(s=sql.Identifier(state.schema)),
            (TASK_NAME,),
        ).fetchall()
    return {r["lock"] for r in rows if r["lock"]}


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
    with queue_lock(state):
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
    with queue_lock(state):
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
    with translate_db_errors("reading the job queue"):
        rows = state.conn.execute(
            sql.SQL(
                "SELECT status::text AS status, count(*) AS n FROM {s}.procrastinate_jobs"
                " WHERE task_name = %s GROUP BY status"
            ).format(s=sql.Identifier(state.schema)),
            (TASK_NAME,),
        ).fetchall()
    return {r["status"]: int(r["n"]) for r in rows}


@dataclass(frozen=True)
class QueueStatus:
    """The job queue as `doctor` reports it (read only)."""

    procrastinate_version: str  # the one that made the tables
    jobs: dict[str, int]  # batch jobs by status
    stalled: int  # running jobs whose worker sent no heartbeat for stalled_worker_s
    workers_alive: int
    dead_leases: dict[str, int] = field(default_factory=dict)  # files held by dead workers

    @property
    def files_held_by_dead(self) -> int:
        return sum(self.dead_leases.values())


def queue_status(state: State, stalled_worker_s: float) -> QueueStatus | None:
    """None when no worker has made the queue yet. Reads only."""
    s = sql.Identifier(state.schema)
    with translate_db_errors("reading the job queue"):
        present = state.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{s.as_string(state.conn)}.queue_schema",),
        ).fetchone()
        if not present or not present["present"]:
            return None
        row = state.conn.execute(
            sql.SQL("SELECT procrastinate_version AS v FROM {s}.queue_schema").format(s=s)
        ).fetchone()
        heartbeats = state.conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE w.id IS NULL OR w.last_heartbeat <"
                "  now() - make_interval(secs => %s)) AS stalled"
                " FROM {s}.procrastinate_jobs j"
                " LEFT JOIN {s}.procrastinate_workers w ON w.id = j.worker_id"
                " WHERE j.task_name = %s AND j.status = 'doing'"
            ).format(s=s),
            (stalled_worker_s, TASK_NAME),
        ).fetchone()
        alive = state.conn.execute(
            sql.SQL(
                "SELECT count(*) AS n FROM {s}.procrastinate_workers"
                " WHERE last_heartbeat >= now() - make_interval(secs => %s)"
            ).format(s=s),
            (stalled_worker_s,),
        ).fetchone()
    return QueueStatus(
        procrastinate_version=row["v"] if row else "?",
        jobs=job_counts(state),
        stalled=int(heartbeats["stalled"]) if heartbeats else 0,
        workers_alive=int(alive["n"]) if alive else 0,
        dead_leases=state.dead_worker_leases(stalled_worker_s),
    )


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
    with queue_lock(state):
        with translate_db_errors("looking for stalled batch jobs"):
            rows = state.conn.execute(
                sql.SQL(
                    "SELECT j.id, j.lock FROM {s}.procrastinate_jobs j"
                    " LEFT JOIN {s}.procrastinate_workers w ON w.id = j.worker_id"
                    " WHERE j.task_name = %s AND j.status = 'doing' AND (w.id IS NULL"
                    "  OR w.last_heartbeat < now() - make_interval(secs => %s))"
                ).format(s=sql.Identifier(state.schema)),
                (TASK_NAME, stalled_worker_s),
            ).fetchall()
        retried = []
        for row in rows:
            try:
                app.job_manager.retry_job_by_id(row["id"], retry_at=datetime.now(UTC))
            except pexc.ProcrastinateException as exc:  # it ended between the look and now
                log.warning("batch %s: its stalled job was not queued again: %s", row["lock"], exc)
                continue
            retried.append(row["lock"])
            log.warning(
                "batch %s: its worker sent no heartbeat for %.0f s; the batch is queued again",
                row["lock"],
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
    the others, and Interrupted when `stop` is set.
    """
    check_bucket(Bucket(settings), settings, stop)
    quiet_procrastinate()  # this process queues jobs through procrastinate's pool too
    app = make_app(settings)
    with State.open(
        settings.database_url, schema=settings.state_schema, migrate=False, require_ledger=True
    ) as state:
        require_queue_schema(state)
        with translate_queue_errors("queueing batches", settings), app.open():
            enqueue_batches(app, settings, state, retry_failed=True)
        ctx = multiprocessing.get_context("spawn")  # no fork: this process holds sockets
        halt = ctx.Event()
        inbox: Any = ctx.Queue()
        summary = WorkerSummary()
        children: list[Any] = []

        def start(i: int) -> Any:
            child = ctx.Process(
                target=_worker_process_main,
                args=(settings, not once, halt, inbox),
                name=f"r2migrate-worker-{i}",
            )
            child.start()
            return child

        children = [start(i) for i in range(processes)]
        log.info("worker: %d process(es) x %d thread(s)", processes, settings.workers)
        error: ErrorPayload | None = None
        next_poll = 0.0

        def take(kind: str, payload: Any) -> None:
            nonlocal error
            if kind == "result":
                summary.results.append(payload)
            elif kind == "error" and error is None:
                error = payload

        def join_all(deadline_s: float | None = None) -> None:
            """Wait for every process, reading what they send (a full pipe would block them);
            with `deadline_s`, kill what is still alive then (their leases are taken over)."""
            ends = None if deadline_s is None else time.monotonic() + deadline_s
            while any(c.is_alive() for c in children) or not inbox.empty():
                if ends is not None and time.monotonic() > ends:
                    log.warning("worker processes did not stop in %.0f s; killing them", deadline_s)
                    for child in children:
                        child.kill()
                    break
                with contextlib.suppress(queue.Empty):
                    take(*inbox.get(timeout=0.2))
            for child in children:
                child.join()

        try:
            while True:
                if stop.is_set() or error is not None:
                    halt.set()
                with contextlib.suppress(queue.Empty):
                    take(*inbox.get(timeout=0.2))
                    continue
                if halt.is_set():
                    if not any(c.is_alive() for c in children):
                        break
                    continue
                if time.monotonic() < next_poll:
                    continue
                next_poll = time.monotonic() + min(poll_s, settings.stalled_worker_s / 3)
                with translate_queue_errors("queueing batches", settings), app.open():
                    enqueue_batches(app, settings, state)
                    retry_stalled_jobs(app, state, settings.stalled_worker_s)
                waiting = job_counts(state).get("todo", 0)
                for i, child in enumerate(children):
                    if child.is_alive():
                        continue
                    child.join()
                    if child.exitcode != 0:
                        log.warning(
                            "worker process %s died (exit %s); starting another",
                            child.name,
                            child.exitcode,
                        )
                        summary.restarts += 1
                    elif once and not waiting:
                        continue  # --once: it found the queue empty
                    children[i] = start(i)
                idle = not waiting and not any(c.is_alive() for c in children)
                # --once ends when nothing waits or runs; a job still "doing" with every process
                # here gone belongs to a dead worker (or one elsewhere): wait for it.
                if once and idle and not job_counts(state).get("doing"):
                    break
        except KeyboardInterrupt:
            # A second Ctrl-C: stop at once, as `run` does. The processes are killed; their leases
            # (dead pids) and jobs (no heartbeat) are taken over, each upload settled by HEAD.
            stop.set()
            halt.set()
            log.warning("stopping at once; the next start settles by HEAD what was in flight")
            for child in children:
                child.kill()
            for child in children:
                child.join()
        except BaseException:
            # This process lost PostgreSQL (say): the workers must not outlive it unseen, and a
            # worker that does not stop must not keep this process waiting for ever.
            halt.set()
            join_all(deadline_s=max(30.0, settings.stalled_worker_s))
            raise
        else:
            join_all()
    if error is not None and error[0] != "Interrupted":
        raise rebuild_error(error)
    if stop.is_set():
        raise Interrupted(
            "Interrupted; every finished upload is recorded.",
            hint="Start `r2migrate worker` again: it queues every batch with work left.",
        )
    return summary
