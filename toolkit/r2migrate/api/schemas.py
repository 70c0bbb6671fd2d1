"""The API's request bodies and response models; responses are built from the library's dataclasses.

Must never hold behaviour: a response model lists the fields of the dataclass it shows (less the
internal ones it names) so a field added to ``VerifySummary`` or ``Batch`` appears here without
a second copy, and request bodies only bound and type what a client may send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from r2migrate.report.audit import BatchProgress, FailureNote
from r2migrate.service import Enqueued
from r2migrate.stages.plan import PlanItem, PlanSummary
from r2migrate.stages.rollback import RollbackItem, RollbackSummary
from r2migrate.stages.verify import FileCheck, VerifySummary
from r2migrate.store.ledger import Batch, FileRecord

__all__ = [
    "PLAN_PROBLEMS_SHOWN",
    "BatchList",
    "BatchOut",
    "CreateBatches",
    "ErrorOut",
    "FailureOut",
    "FileCheckOut",
    "FileOut",
    "FilePage",
    "HealthOut",
    "JobOut",
    "PlanItemOut",
    "PlanOut",
    "ProbeOut",
    "ProcessBatch",
    "ProgressOut",
    "QueuedOut",
    "RollbackBatch",
    "RollbackItemOut",
    "RollbackOut",
    "VerifyBatch",
    "VerifyOut",
    "model_of",
]

PLAN_PROBLEMS_SHOWN = 100  # refused / conflicting plan items returned by POST /batches


# -- request bodies (unknown fields rejected, JSON types strict, sizes bounded) -----------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateBatches(_Body):
    """POST /batches: take an inventory, then plan (``dry_run``: decide only, store nothing)."""

    batch_size: int | None = Field(
        default=None, ge=1, le=10_000, description="files per batch (default: the setting, 50)"
    )
    max_files: int | None = Field(
        default=None, ge=1, le=10_000_000, description="plan at most N files (default: all)"
    )
    dry_run: bool = Field(default=False, description="true: decide only, store nothing anywhere")


class ProcessBatch(_Body):
    """POST /batches/{id}/process (the body is optional)."""

    processes: int | None = Field(
        default=None, ge=0, le=256, description="upload processes (0 = auto; default: setting)"
    )


class VerifyBatch(_Body):
    """POST /batches/{id}/verify (optional; ``?deep=true`` and ``?sample=N`` work as well)."""

    deep: bool = Field(default=False, description="read every object back and re-hash it")
    sample: int | None = Field(
        default=None, ge=0, le=1_000_000, description="deep-check N random files"
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="seed for sample (reported back)"
    )


class RollbackBatch(_Body):
    """POST /batches/{id}/rollback: ``dry_run`` is required, so a deletion is never implied."""

    dry_run: bool = Field(description="true: only report what would be deleted")


# -- responses ----------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def model_of(
    source: type[Any],
    name: str,
    *,
    exclude: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> type[BaseModel]:
    """A response model named ``name`` with the fields (types and comments' meaning) of the
    dataclass ``source`` less ``exclude``, plus ``extra`` (name -> type, or (type, Field)),
    which replaces a field of the same name (a nested dataclass shown by its own model) or
    adds a property of ``source``. Read with ``model_validate(obj)`` (from attributes)."""
    hints = get_type_hints(source)
    more = dict(extra or {})
    skip = set(exclude)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(source):  # in the dataclass's order, replacements in place
        if f.name not in skip:
            fields[f.name] = more.pop(f.name, hints[f.name])
    fields.update(more)
    fields = {k: v if isinstance(v, tuple) else (v, ...) for k, v in fields.items()}
    model: type[BaseModel] = create_model(
        name, __base__=_Out, __doc__=(source.__doc__ or "").strip() or None, **fields
    )
    return model


class ErrorOut(_Out):
    """Every error: a snake_case ``code``, a message, and a hint saying what to do next."""

    code: str
    message: str
    hint: str = ""


class JobOut(_Out):
    """The runner this server started for a batch (None when it started none)."""

    state: Literal["running", "stopping", "completed", "interrupted", "failed"]
    started_at: datetime
    finished_at: datetime | None
    uploaded: int = Field(
        description="files this runner recorded as uploaded (when stopped or failed: until then)"
    )
    failed: int
    error: ErrorOut | None


FailureOut = model_of(FailureNote, "FailureOut")
ProgressOut = model_of(
    BatchProgress,
    "ProgressOut",
    exclude=("batch_id", "status", "started_at", "completed_at", "target"),
    extra={"files_left": int, "fraction_done": float, "recent_failures": list[FailureOut]},  # type: ignore[valid-type]
)
QueuedOut = model_of(
    Enqueued,
    "QueuedOut",
    extra={
        "queued": (bool, Field(description="false: a job for this batch already waits or runs")),
        "jobs": (dict[str, int], Field(description="batch jobs in the queue by status")),
    },
)
BatchOut = model_of(
    Batch,
    "BatchOut",
    extra={
        "status": str,
        "progress": ProgressOut,
        "job": JobOut | None,
        "verify_problems": (
            dict[str, int],
            Field(description="files whose last check failed, by outcome ({differ: 2})"),
        ),
        "queued": (bool, Field(description="a job for it waits or runs in the worker queue")),
        "endpoint_url": (str, Field(description='normalised; "" = AWS\'s own endpoint')),
        "source_kind": (str, Field(description="disk | http")),
    },
)


class BatchList(_Out):
    """GET /batches: every batch, oldest first."""

    batches: list[BatchOut]  # type: ignore[valid-type]


PlanItemOut = model_of(PlanItem, "PlanItemOut", exclude=("file_ids", "batch_id"))
PlanOut = model_of(
    PlanSummary,
    "PlanOut",
    exclude=("list_requests", "items"),
    extra={
        "batch_ids": list[str],
        "problems": (
            list[PlanItemOut],  # type: ignore[valid-type]
            Field(description=f"first {PLAN_PROBLEMS_SHOWN} not sendable"),
        ),
    },
)
FileOut = model_of(
    FileRecord,
    "FileOut",
    exclude=(
        "batch_id",
        "mtime_ns",
        "part_size_bytes",
        "lease_owner",
        "source_refs",
        "previous_status",
    ),
)


class FilePage(_Out):
    """GET /batches/{id}/files: one page of the batch's ledger rows."""

    batch_id: str
    status: str | None
    total: int
    limit: int
    offset: int
    files: list[FileOut]  # type: ignore[valid-type]


FileCheckOut = model_of(FileCheck, "FileCheckOut", exclude=("row_id",))
VerifyOut = model_of(
    VerifySummary,
    "VerifyOut",
    exclude=("key_prefixes", "left_out_batches", "left_out_note"),
    extra={
        "batch_ids": list[str],
        "ok": bool,
        "class_b_ops": int,
        "class_b_cost_usd": float,
        "problems": list[FileCheckOut],  # type: ignore[valid-type]
    },
)
RollbackItemOut = model_of(RollbackItem, "RollbackItemOut", exclude=("row_id",))
RollbackOut = model_of(
    RollbackSummary,
    "RollbackOut",
    exclude=("items",),
    extra={
        "ok": bool,
        "batch_status": str,
        "deleted": (list[str], Field(description="keys deleted (empty in a dry run)")),
        "would_delete": (
            list[str],
            Field(default_factory=list, description="in a dry run: the keys that would be deleted"),
        ),
        "problems": list[RollbackItemOut],  # type: ignore[valid-type]
    },
)


class ProbeOut(_Out):
    """One dependency of GET /health."""

    ok: bool
    error: str | None = Field(default=None, description="error code only; details are in the log")


class HealthOut(_Out):
    """GET /health: can this server reach PostgreSQL and the bucket?"""

    status: Literal["ok", "unavailable"]
    version: str
    database: ProbeOut
    bucket: ProbeOut
