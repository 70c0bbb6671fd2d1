"""r2migrate: move Django media files to Cloudflare R2 or any S3 bucket, and prove nothing was lost.

The Python API is the same one the CLI, the notebooks and the Django command call. It never
prints and never reads the environment except through ``load_settings``.

    >>> from r2migrate import load_settings, State, inventory, plan, run
    >>> settings = load_settings()
    >>> with State.open(settings.database_url) as state:
    ...     inventory(settings, state)
    ...     plan(settings, state, dry_run=True)

Names are imported on first use (a module-level ``__getattr__``), so ``import r2migrate`` and
``r2migrate --help`` load neither boto3 nor psycopg; ``from r2migrate import Settings`` works as
before.

Each stage function has the name of its module (``inventory``, ``plan``, ``verify``,
``rollback``, ``doctor``), so ``r2migrate.verify`` is the function; import a module's other names
from the module itself: ``from r2migrate.stages.verify import VerifyOutcome``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from r2migrate.errors import (
        AccessDenied,
        BatchBusy,
        BatchNotFound,
        BatchRolledBack,
        BucketError,
        BucketUnavailable,
        CertificateRefused,
        ConfigError,
        DatabaseUnavailable,
        DigestMismatch,
        ExitCode,
        Interrupted,
        NoSuchBucket,
        ObjectExists,
        PrivilegeMissing,
        Problem,
        SchemaNotReady,
        SchemaTooNew,
        ServiceUnavailable,
        SourceError,
        SourceRefused,
        SourceUnavailable,
        StateError,
        TargetMismatch,
        ToolkitError,
        TransientBucketError,
        UnsafePath,
    )
    from r2migrate.repairs import RepairSummary, repair
    from r2migrate.report.doctor import Check, CheckStatus, DoctorReport, doctor
    from r2migrate.rules.binding import SourceSpec, Target
    from r2migrate.rules.keys import content_headers_for, object_key_for
    from r2migrate.s3.bucket import Bucket, ObjectInfo
    from r2migrate.settings.config import Settings, load_settings
    from r2migrate.stages.inventory import CostEstimate, InventorySummary, inventory
    from r2migrate.stages.plan import Action, PlanItem, PlanSummary, plan
    from r2migrate.stages.rollback import (
        RollbackItem,
        RollbackOutcome,
        RollbackProgress,
        RollbackSummary,
        rollback,
    )
    from r2migrate.stages.transfer import BatchResult, Progress, RunSummary, run
    from r2migrate.stages.verify import (
        FileCheck,
        VerifyOutcome,
        VerifyProgress,
        VerifySummary,
        verify,
    )
    from r2migrate.store.ledger import Batch, BatchStatus, FileRecord, FileStatus, MediaFile, State

__version__ = "0.1.0"

# Each public name and the module it lives in, imported on first use.
_LAZY: dict[str, str] = {
    "AccessDenied": "r2migrate.errors",
    "Action": "r2migrate.stages.plan",
    "Batch": "r2migrate.store.ledger",
    "BatchBusy": "r2migrate.errors",
    "BatchNotFound": "r2migrate.errors",
    "BatchResult": "r2migrate.stages.transfer",
    "BatchRolledBack": "r2migrate.errors",
    "BatchStatus": "r2migrate.store.ledger",
    "Bucket": "r2migrate.s3.bucket",
    "BucketError": "r2migrate.errors",
    "BucketUnavailable": "r2migrate.errors",
    "CertificateRefused": "r2migrate.errors",
    "Check": "r2migrate.report.doctor",
    "CheckStatus": "r2migrate.report.doctor",
    "ConfigError": "r2migrate.errors",
    "CostEstimate": "r2migrate.stages.inventory",
    "DatabaseUnavailable": "r2migrate.errors",
    "DigestMismatch": "r2migrate.errors",
    "DoctorReport": "r2migrate.report.doctor",
    "ExitCode": "r2migrate.errors",
    "FileCheck": "r2migrate.stages.verify",
    "FileRecord": "r2migrate.store.ledger",
    "FileStatus": "r2migrate.store.ledger",
    "Interrupted": "r2migrate.errors",
    "InventorySummary": "r2migrate.stages.inventory",
    "MediaFile": "r2migrate.store.ledger",
    "NoSuchBucket": "r2migrate.errors",
    "ObjectExists": "r2migrate.errors",
    "ObjectInfo": "r2migrate.s3.bucket",
    "PlanItem": "r2migrate.stages.plan",
    "PlanSummary": "r2migrate.stages.plan",
    "PrivilegeMissing": "r2migrate.errors",
    "Problem": "r2migrate.errors",
    "Progress": "r2migrate.stages.transfer",
    "RepairSummary": "r2migrate.repairs",
    "RollbackItem": "r2migrate.stages.rollback",
    "RollbackOutcome": "r2migrate.stages.rollback",
    "RollbackProgress": "r2migrate.stages.rollback",
    "RollbackSummary": "r2migrate.stages.rollback",
    "RunSummary": "r2migrate.stages.transfer",
    "SchemaNotReady": "r2migrate.errors",
    "SchemaTooNew": "r2migrate.errors",
    "ServiceUnavailable": "r2migrate.errors",
    "Settings": "r2migrate.settings.config",
    "SourceError": "r2migrate.errors",
    "SourceRefused": "r2migrate.errors",
    "SourceSpec": "r2migrate.rules.binding",
    "SourceUnavailable": "r2migrate.errors",
    "State": "r2migrate.store.ledger",
    "StateError": "r2migrate.errors",
    "Target": "r2migrate.rules.binding",
    "TargetMismatch": "r2migrate.errors",
    "ToolkitError": "r2migrate.errors",
    "TransientBucketError": "r2migrate.errors",
    "UnsafePath": "r2migrate.errors",
    "VerifyOutcome": "r2migrate.stages.verify",
    "VerifyProgress": "r2migrate.stages.verify",
    "VerifySummary": "r2migrate.stages.verify",
    "content_headers_for": "r2migrate.rules.keys",
    "doctor": "r2migrate.report.doctor",
    "inventory": "r2migrate.stages.inventory",
    "load_settings": "r2migrate.settings.config",
    "object_key_for": "r2migrate.rules.keys",
    "plan": "r2migrate.stages.plan",
    "repair": "r2migrate.repairs",
    "rollback": "r2migrate.stages.rollback",
    "run": "r2migrate.stages.transfer",
    "verify": "r2migrate.stages.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AccessDenied",
    "Action",
    "Batch",
    "BatchBusy",
    "BatchNotFound",
    "BatchResult",
    "BatchRolledBack",
    "BatchStatus",
    "Bucket",
    "BucketError",
    "BucketUnavailable",
    "CertificateRefused",
    "Check",
    "CheckStatus",
    "ConfigError",
    "CostEstimate",
    "DatabaseUnavailable",
    "DigestMismatch",
    "DoctorReport",
    "ExitCode",
    "FileCheck",
    "FileRecord",
    "FileStatus",
    "Interrupted",
    "InventorySummary",
    "MediaFile",
    "NoSuchBucket",
    "ObjectExists",
    "ObjectInfo",
    "PlanItem",
    "PlanSummary",
    "PrivilegeMissing",
    "Problem",
    "Progress",
    "RepairSummary",
    "RollbackItem",
    "RollbackOutcome",
    "RollbackProgress",
    "RollbackSummary",
    "RunSummary",
    "SchemaNotReady",
    "SchemaTooNew",
    "ServiceUnavailable",
    "Settings",
    "SourceError",
    "SourceRefused",
    "SourceSpec",
    "SourceUnavailable",
    "State",
    "StateError",
    "Target",
    "TargetMismatch",
    "ToolkitError",
    "TransientBucketError",
    "UnsafePath",
    "VerifyOutcome",
    "VerifyProgress",
    "VerifySummary",
    "__version__",
    "content_headers_for",
    "doctor",
    "inventory",
    "load_settings",
    "object_key_for",
    "plan",
    "repair",
    "rollback",
    "run",
    "verify",
]
