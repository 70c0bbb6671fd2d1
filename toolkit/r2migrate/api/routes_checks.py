"""Checking and undoing a batch: ``verify`` (cheap, deep or sampled) and ``rollback``.

Must never delete or compare anything itself: each route calls ``service.verify_batches`` or
``service.rollback_batch``; a rollback is refused (409) while this server's runner holds the batch.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from r2migrate import service
from r2migrate.api.context import Ctx, require_token
from r2migrate.api.handlers import ERROR_RESPONSES
from r2migrate.api.routes_batches import BatchId
from r2migrate.api.schemas import RollbackBatch, RollbackOut, VerifyBatch, VerifyOut
from r2migrate.errors import BatchBusy

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.post("/batches/{batch_id}/verify", response_model=VerifyOut)
def verify_batch(
    ctx: Ctx,
    batch_id: BatchId,
    body: VerifyBatch | None = None,
    deep: Annotated[bool, Query(description="as the body's deep")] = False,
    sample: Annotated[int | None, Query(ge=0, le=1_000_000, description="as the body's")] = None,
    seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="as the body's")] = None,
) -> BaseModel:
    """Check the batch against the bucket: cheap (HEAD), ``deep`` or a ``sample`` read back.

    ``r2migrate verify --batch BATCH [--deep | --sample N]``; ``ok`` is false when any file is not a
    match (the CLI's exit 1), and ``problems`` lists those files. The options go in the JSON
    body or the query (``?deep=true``, ``?sample=N&seed=S``); the body wins where both are set.
    """
    body = body or VerifyBatch()
    summary = service.verify_batches(
        ctx.settings,
        batch_id=batch_id,
        deep=body.deep or deep,
        sample=body.sample if body.sample is not None else sample,
        seed=body.seed if body.seed is not None else seed,
        bucket=ctx.bucket(),
    )
    return VerifyOut.model_validate(summary)


@router.post("/batches/{batch_id}/rollback", response_model=RollbackOut)
def rollback(ctx: Ctx, batch_id: BatchId, body: RollbackBatch) -> BaseModel:
    """Delete only the objects this batch wrote that still hold its SHA-256 (``dry_run``: list).

    ``r2migrate rollback --batch BATCH [--dry-run]``. 409 while a runner holds the batch's files.
    """
    if ctx.jobs.running(batch_id):
        raise BatchBusy(
            f"Batch {batch_id} is being processed by this server; it cannot be rolled back "
            "meanwhile.",
            hint=f"POST /batches/{batch_id}/stop first, then roll back.",
        )
    summary = service.rollback_batch(
        ctx.settings, batch_id, dry_run=body.dry_run, bucket=ctx.bucket()
    )
    keys = list(summary.deleted)  # in a dry run: the keys that would be deleted
    return RollbackOut.model_validate(summary).model_copy(
        update={
            "deleted": [] if summary.dry_run else keys,
            "would_delete": keys if summary.dry_run else [],
        }
    )
