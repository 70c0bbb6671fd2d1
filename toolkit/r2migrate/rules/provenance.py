"""Who wrote an object that no batch names: r2migrate (a leftover) or the application.

Must not do I/O: it decides from what one HEAD reported (r2migrate's ``sha256`` metadata and
``Last-Modified``) and when the migration began; verify does the asking.

After ``STORAGES["default"]`` is switched to S3Storage the application writes into the same key
space as the migration: new uploads, thumbnails, renditions. Those objects are the site at work,
not a failure of the migration, so verify counts them apart (``app_written``) and they never
fail it. What stays ``extra`` (a failure) is what should not be there:

- an object carrying r2migrate's ``sha256`` metadata that no live ledger row names (left by a
  rolled-back batch that could not delete it, or by another ledger): r2migrate wrote it, so the
  application cannot have;
- an object r2migrate did not write that is older than the migration (it was in the bucket
  before the first batch ran: nothing the application wrote after the switch).

The boundary is the first batch's start minus ``CLOCK_TOLERANCE_S``: the ledger's times come from
PostgreSQL's clock, ``Last-Modified`` from the bucket's, and ``doctor`` warns beyond a minute of
skew. An object without a ``Last-Modified`` is given the benefit of the doubt (application).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

CLOCK_TOLERANCE_S = 60.0  # doctor's clock-skew warning threshold

APP_WRITTEN_MEANING = (
    "an object the application wrote after the migration began (no r2migrate metadata): "
    "not the migration's, never a failure"
)


@dataclass(frozen=True)
class ExtraOrigin:
    """The verdict on one object beside the migrated ones."""

    app_written: bool  # True: the application's (not a failure); False: ``extra`` (a failure)
    reason: str


def classify_extra(
    *,
    sha256_metadata: str | None,
    last_modified: datetime | None,
    migration_started_at: datetime | None,
) -> ExtraOrigin:
    """Sort one object that no live ledger row names (see the module docstring)."""
    if sha256_metadata:
        return ExtraOrigin(
            False,
            "carries r2migrate's sha256 metadata but no live batch names it "
            "(left by a rolled-back batch or another ledger)",
        )
    if (
        last_modified is not None
        and migration_started_at is not None
        and last_modified < migration_started_at - timedelta(seconds=CLOCK_TOLERANCE_S)
    ):
        return ExtraOrigin(
            False,
            f"not written by r2migrate, and older ({last_modified.isoformat()}) than the "
            f"migration ({migration_started_at.isoformat()}): in no batch",
        )
    return ExtraOrigin(True, "written by the application after the migration began")
