"""Uploading a batch: in this server (``process``, ``stop``) or by the worker queue (``enqueue``).

Must never upload anything itself: ``process`` hands ``service.run_batches`` for one batch to the
``JobRegistry`` and returns at once; ``enqueue`` calls ``service.enqueue_batch``.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from r2migrate import service
from r2migrate.api.context import Ctx, require_token
from r2migrate.api.handlers import ERROR_RESPONSES, json_error
from r2migrate.api.routes_batches import BatchId
from r2migrate.api.schemas import ErrorOut, JobOut, ProcessBatch, QueuedOut
from r2migrate.rules import binding
from r2migrate.stages.transfer import RunSummary

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.post("/batches/{batch_id}/process", response_model=JobOut, status_code=202)
def process_batch(ctx: Ctx, batch_id: BatchId, body: ProcessBatch | None = None) -> JobOut:
    """Start or resume uploading the batch in the background (``r2migrate run --batch``).

    Returns at once; 409 while this server already runs it. Failed files get a new round of
    attempts and uploads left in flight by a crash are resolved by HEAD, as with the CLI.
    """
    settings = ctx.settings
    with service.open_state(settings) as state:
        batch = state.get_batch(batch_id)  # 404 now rather than a failed runner later
    binding.settings_for_batch(settings, batch)  # 409 now when bound to another target
    processes = body.processes if body is not None else None

    def work(stop: threading.Event) -> RunSummary:
        ran = service.run_batches(settings, batch_id=batch_id, stop=stop, processes=processes)
        return ran.summary

    def uploaded_so_far() -> int:
        now = service.batch_status(settings, batch_id).batch
        return now.uploaded_files - batch.uploaded_files

    return ctx.jobs.start(batch_id, work, uploaded_so_far=uploaded_so_far)


@router.post("/batches/{batch_id}/enqueue", response_model=QueuedOut, status_code=202)
def enqueue_batch(ctx: Ctx, batch_id: BatchId) -> BaseModel:
    """Hand the batch to the `r2migrate worker` processes (on any machine) instead of this
    server: one job in the queue in PostgreSQL. Failed files get a new round of attempts.
    """
    return QueuedOut.model_validate(service.enqueue_batch(ctx.settings, batch_id))


@router.post(
    "/batches/{batch_id}/stop",
    response_model=JobOut,
    status_code=202,
    responses={409: {"model": ErrorOut, "description": "this server runs nothing for the batch"}},
)
def stop_batch(ctx: Ctx, batch_id: BatchId) -> JobOut | JSONResponse:
    """Ask this server's runner to finish the uploads in flight and stop (resumable).

    202 with the runner while it stops; 409 ``not_running`` when this server runs nothing for
    the batch (never started here, already ended, or handed to the workers).
    """
    with service.open_state(ctx.settings) as state:
        state.get_batch(batch_id)
    job = ctx.jobs.stop(batch_id) if ctx.jobs.running(batch_id) else None
    if job is None:
        last = ctx.jobs.view(batch_id)
        ended = f" Its last run here ended: {last.state}." if last is not None else ""
        return json_error(
            409,
            ErrorOut(
                code="not_running",
                message=f"This server is not running batch {batch_id}, so there is nothing to "
                f"stop.{ended}",
                hint=f"Start it with POST /batches/{batch_id}/process; a batch handed to the "
                "workers stops with the `r2migrate worker` processes (Ctrl-C or SIGTERM).",
            ),
        )
    return job
