"""``/batches``: plan (inventory then plan), list every batch, one batch, and its files.

Must never compose stages: each route maps its arguments onto one ``service`` function and its
result onto a response model; ``ToolkitError``s pass through to the handlers unchanged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel

from r2migrate import service
from r2migrate.api.context import Ctx, require_token
from r2migrate.api.handlers import ERROR_RESPONSES
from r2migrate.api.schemas import (
    PLAN_PROBLEMS_SHOWN,
    BatchList,
    BatchOut,
    CreateBatches,
    FileOut,
    FilePage,
    JobOut,
    PlanItemOut,
    PlanOut,
    ProgressOut,
)
from r2migrate.stages.plan import Action
from r2migrate.store.ledger import FileStatus

__all__ = ["BatchId", "batch_out", "router"]

MAX_FILES_PAGE = 1000

BatchId = Annotated[str, PathParam(min_length=1, max_length=200, description="a batch id")]

router = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


def batch_out(overview: service.BatchOverview, job: JobOut | None) -> BaseModel:
    """A batch as the ledger holds it, where it stands, and this server's runner for it.

    Callers read ``job`` before the ledger: a runner seen finished has written its last status,
    so a batch never shows "running" beside a runner that has ended."""
    batch, progress = overview.batch, overview.progress
    return BatchOut.model_validate(
        {
            **{
                name: getattr(batch, name) for name in BatchOut.model_fields if hasattr(batch, name)
            },
            "status": batch.status.value,
            "progress": ProgressOut.model_validate(progress),
            "job": job,
            "verify_problems": overview.verify_problems,
            "queued": overview.queued,
        }
    )


@router.post("/batches", response_model=PlanOut, status_code=201)
def create_batches(ctx: Ctx, body: CreateBatches, response: Response) -> BaseModel:
    """Take an inventory and plan: store batches (201), or with ``dry_run`` decide only (200).

    The same calls as ``r2migrate plan [--dry-run] [--batch-size N] [--max-files N]``.
    """
    summary = service.plan_batches(
        ctx.settings,
        dry_run=body.dry_run,
        batch_size=body.batch_size,
        max_files=body.max_files,
        bucket=ctx.bucket(),
    ).plan
    if summary.dry_run:
        response.status_code = 200
    odd = [i for i in summary.items if i.action not in (Action.UPLOAD, Action.ALREADY_THERE)]
    return PlanOut.model_validate(
        {
            **{name: getattr(summary, name) for name in PlanOut.model_fields if name != "problems"},
            "batch_ids": list(summary.batch_ids),
            "problems": [PlanItemOut.model_validate(i) for i in odd[:PLAN_PROBLEMS_SHOWN]],
        }
    )


@router.get("/batches", response_model=BatchList)
def list_batches(ctx: Ctx) -> BatchList:
    """Every batch, oldest first, with progress, throughput, ETA and recent failures."""
    jobs = ctx.jobs.views()
    overviews = service.list_batches(ctx.settings)
    batches = [batch_out(o, jobs.get(o.batch.batch_id)) for o in overviews]
    return BatchList.model_validate({"batches": batches})


@router.get("/batches/{batch_id}", response_model=BatchOut)
def get_batch(ctx: Ctx, batch_id: BatchId) -> BaseModel:
    """One batch: counts, bytes, throughput, ETA, status, failures, this server's runner."""
    job = ctx.jobs.view(batch_id)
    return batch_out(service.batch_status(ctx.settings, batch_id), job)


@router.get("/batches/{batch_id}/files", response_model=FilePage)
def batch_files(
    ctx: Ctx,
    batch_id: BatchId,
    status: Annotated[FileStatus | None, Query(description="only files in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> FilePage:
    """The batch's ledger rows in order, a page at a time, optionally of one status."""
    with service.open_state(ctx.settings) as state:
        state.get_batch(batch_id)
        files = state.batch_files(batch_id, status=status)
    return FilePage.model_validate(
        {
            "batch_id": batch_id,
            "status": status.value if status is not None else None,
            "total": len(files),
            "limit": limit,
            "offset": offset,
            "files": [FileOut.model_validate(f) for f in files[offset : offset + limit]],
        }
    )
