"""r2migrate: move Django media files to Cloudflare R2 or any S3 bucket, and prove nothing was lost.

The Python API is the same one the CLI, the notebooks and the Django command call. It never
prints and never reads the environment except through ``load_settings``.

    >>> from r2migrate import load_settings, State, inventory, plan, run
    >>> settings = load_settings()
    >>> with State.open(settings.database_url) as state:
    ...     inventory(settings, state)
    ...     plan(settings, state, dry_run=True)

Each stage function has the name of its module (``inventory``, ``plan``, ``verify``,
``rollback``, ``doctor``), so ``r2migrate.verify`` is the function; import a module's other names
from the module itself: ``from r2migrate.stages.verify import VerifyOutcome``.
"""

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
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.rollback import (
    RollbackItem,
    RollbackOutcome,
    RollbackProgress,
    RollbackSummary,
    rollback,
)
from r2migrate.stages.transfer import BatchResult, Progress, RunSummary, run
from r2migrate.stages.verify import FileCheck, VerifyOutcome, VerifyProgress, VerifySummary, verify
from r2migrate.store.ledger import Batch, BatchStatus, FileRecord, FileStatus, MediaFile, State

__version__ = "0.1.0"

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
    "StageProgress",
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
