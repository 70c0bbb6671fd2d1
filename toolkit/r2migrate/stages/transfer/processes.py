"""Upload processes: spawn them over the same batches, collect their results, rebuild errors.

Must not send anything itself except the files of a process that died (through the scheduler);
the ledger's leases split the work between processes, never this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.queues
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from r2migrate.errors import (
    AccessDenied,
    BatchNotFound,
    BucketUnavailable,
    DatabaseUnavailable,
    ExitCode,
    Interrupted,
    NoSuchBucket,
    SourceUnavailable,
    ToolkitError,
)
from r2migrate.runtime.logs import configure_logging
from r2migrate.runtime.supervisor import Supervisor
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.transfer.results import BatchResult, RunSummary
from r2migrate.stages.transfer.scheduler import finalize_batch, send_batches
from r2migrate.stages.transfer.sender import Sender
from r2migrate.store.ledger import BatchStatus, State

log = logging.getLogger(__name__)


def run_processes(
    settings: Settings,
    state: State,
    batch_ids: Sequence[str],
    count: int,
    stop: threading.Event,
    on_progress: Callable[[StageProgress], None] | None,
) -> RunSummary:
    """Spawn `count` upload processes over the same batches; the ledger's leases split the work."""
    per_batch: dict[str, list[BatchResult]] = {}
    errors: list[ErrorPayload] = []
    seen: dict[str, tuple[int, str]] = {}

    def take(kind: str, payload: Any) -> None:
        if kind == "result":
            per_batch.setdefault(payload.batch_id, []).append(payload)
        elif kind == "error":
            errors.append(payload)

    def tick() -> bool:
        if on_progress is not None:
            _poll_progress(state, batch_ids, seen, on_progress)
        return sup.alive()

    sup = Supervisor(
        _child_main,
        (settings, list(batch_ids)),
        count=count,
        name="r2migrate-upload",
        stop=stop,
        on_message=take,
        on_interrupt="wait",  # a second Ctrl-C waits for in-flight uploads to be recorded
    )
    log.info("running %d batch(es) in %d processes", len(batch_ids), count)
    with sup:
        sup.run(tick_s=0.5, on_tick=tick, receive_s=0.5)
    if stop.is_set():
        for bid in batch_ids:
            if (
                state.open_file_count(bid) == 0
                and state.get_batch(bid).status is BatchStatus.RUNNING
            ):
                finalize_batch(state, bid, [])
        raise Interrupted(
            "Interrupted; every finished upload is recorded.",
            hint="Resume with `r2migrate run` (or `r2migrate run --batch BATCH`).",
        )
    if errors:
        raise rebuild_error(errors[0])
    # A process killed from outside leaves leased rows; finish them here, in this process.
    dead = [e for e in sup.exits if not e.ok]
    if dead:
        log.warning("%d upload process(es) died; finishing their files here", len(dead))
        sender = Sender(settings, Bucket(settings), stop)
        try:
            left = []
            for bid in batch_ids:
                state.release_dead_leases(bid)
                if state.open_file_count(bid):
                    left.append(bid)
            for result in send_batches(settings, state, left, sender, stop, on_progress):
                per_batch.setdefault(result.batch_id, []).append(result)
        finally:
            sender.close()
    if on_progress is not None:
        _poll_progress(state, batch_ids, seen, on_progress)
    return RunSummary(tuple(_merge(state, bid, per_batch.get(bid, [])) for bid in batch_ids))


def init_child_process(settings: Settings) -> None:
    """Set up a spawned upload or worker process: signals, death with its parent, logging.

    Ctrl-C reaches the parent, which tells its children to stop; a child must finish its
    in-flight PUTs, so it ignores SIGINT and SIGTERM. Its console shows warnings only.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    configure_logging(
        level=settings.log_level,
        log_file=settings.effective_log_file,
        log_format=settings.log_format,
        console_level="WARNING",
        secrets=settings.secret_values(),
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.2


def die_with_parent() -> None:
    """End this spawned process as soon as the process that started it dies (kill -9 included).

    Without this, upload processes outlive a killed `run` and go on sending its batches. The
    child ignores SIGTERM (see init_child_process), so it gets SIGKILL: what it had in flight is
    settled by HEAD at the next start, as after any crash. Linux sends the parent-death signal
    when the *thread* that started the child ends: the thread that calls `run` (or
    `run_workers`, or the API's runner) waits for its children, so in practice that is the
    death of the process. The parent may be gone before prctl takes effect, so its pid is
    checked right after; a thread polling the parent pid covers systems without prctl.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    expected = parent.pid
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the thread below only
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != expected:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch_parent() -> None:
        while os.getppid() == expected:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch_parent, name="r2m-parent-watch", daemon=True).start()


def _child_main(
    settings: Settings,
    batch_ids: list[str],
    halt: Any,
    inbox: Any,
) -> None:
    """One upload process: its own connection, client and threads; reports results, not logs."""
    init_child_process(settings)
    stop = threading.Event()

    def watch_halt() -> None:
        halt.wait()
        stop.set()

    threading.Thread(target=watch_halt, daemon=True).start()
    try:
        with State.open(settings.database_url, schema=settings.state_schema, migrate=False) as st:
            sender = Sender(settings, Bucket(settings), stop)
            try:
                for result in send_batches(settings, st, batch_ids, sender, stop, None):
                    inbox.put(("result", result))
            finally:
                sender.close()
    except ToolkitError as exc:
        inbox.put(("error", error_payload(exc)))


ErrorPayload = tuple[str, str, str, int]


def error_payload(exc: ToolkitError) -> ErrorPayload:
    """What a child process tells its parent about an error: name, message, hint, exit code."""
    return (type(exc).__name__, exc.message, exc.hint, int(exc.exit_code))


def rebuild_error(payload: ErrorPayload) -> ToolkitError:
    """The parent's copy of a child's error, with the same message, hint and exit code."""
    name, message, hint, code = payload
    kinds: dict[str, type[ToolkitError]] = {
        "BucketUnavailable": BucketUnavailable,
        "DatabaseUnavailable": DatabaseUnavailable,
        "AccessDenied": AccessDenied,
        "NoSuchBucket": NoSuchBucket,
        "BatchNotFound": BatchNotFound,
        "SourceUnavailable": SourceUnavailable,
        "Interrupted": Interrupted,  # so a caller can ask isinstance(..., Interrupted)
    }
    error = kinds.get(name, ToolkitError)(message, hint=hint)
    error.exit_code = ExitCode(code)  # e.g. SourceRefused (exit 2) arrives as a ToolkitError
    return error


def _poll_progress(
    state: State,
    batch_ids: Sequence[str],
    seen: dict[str, tuple[int, str]],
    on_progress: Callable[[StageProgress], None],
) -> None:
    wanted = set(batch_ids)
    for b in state.list_batches():
        if b.batch_id not in wanted:
            continue
        done = b.uploaded_files + b.skipped_files
        if seen.get(b.batch_id) != (done, b.status.value):
            seen[b.batch_id] = (done, b.status.value)
            on_progress(
                StageProgress(
                    b.batch_id,
                    done,
                    b.total_files,
                    b.uploaded_bytes,
                    b.total_bytes,
                    "",
                    b.status.value,
                    stage="run",
                )
            )


def _merge(state: State, batch_id: str, parts: Sequence[BatchResult]) -> BatchResult:
    batch = state.get_batch(batch_id)
    return BatchResult(
        batch_id=batch_id,
        status=batch.status,
        uploaded=sum(p.uploaded for p in parts),
        skipped=batch.skipped_files,
        failed=sum(p.failed for p in parts),
        conflict=sum(p.conflict for p in parts),
        resolved_by_head=sum(p.resolved_by_head for p in parts),
        bytes_sent=sum(p.bytes_sent for p in parts),
        attempts=sum(p.attempts for p in parts),
        elapsed_s=max((p.elapsed_s for p in parts), default=0.0),
        failures=tuple(f for p in parts for f in p.failures),
    )
