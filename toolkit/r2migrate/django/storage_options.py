"""The target storage's options that change what the site reads or writes after the switch.

Must never send a request, build a storage or write anything: it reads the attributes of the
``S3Storage`` instance the project configures and compares its target with the batches' (and with
the target r2migrate is configured for). The cutover check and ``doctor`` both call it, so the
two never disagree.

Failures (the site breaks after the switch although every migrated object is right):

- ``file_overwrite`` True (django-storages' default): FileSystemStorage never overwrites, so an
  application written for it saves derived files (thumbnails, renditions) and new uploads under
  names that are taken, trusting the storage to pick a free one. S3Storage then writes over the
  migrated object instead;
- the storage's bucket, location or endpoint is not the batches' target (nor the target
  r2migrate is configured for): after the switch the site would ask where nothing was migrated.

Notes (shown, never a failure): ``default_acl``, ``querystring_auth``, ``gzip``,
``custom_domain``, each with what it changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from r2migrate.rules.binding import Target, normalize_endpoint

__all__ = ["FILE_OVERWRITE_FIX", "StorageOptions", "check_storage_options", "storage_target"]

FILE_OVERWRITE_FIX = (
    'set "file_overwrite": False in the storage\'s OPTIONS (AWS_S3_FILE_OVERWRITE = False)'
)


@dataclass(frozen=True)
class StorageOptions:
    """What the storage's options mean for the site after the switch."""

    target: Target  # where the storage reads and writes
    failures: tuple[str, ...]  # each breaks the site after the switch
    notes: tuple[str, ...]  # worth knowing, never a failure
    shown: tuple[tuple[str, str], ...]  # (option, value) of every option checked

    @property
    def ok(self) -> bool:
        return not self.failures


def storage_target(storage: Any) -> Target:
    """The ``Target`` an S3Storage instance reads and writes (same spelling as a batch's)."""
    return Target(
        normalize_endpoint(getattr(storage, "endpoint_url", None)),
        str(getattr(storage, "bucket_name", "") or ""),
        str(getattr(storage, "location", "") or "").strip("/"),
    )


def _same(a: Target, b: Target) -> bool:
    return (a.endpoint_url, a.bucket_name, a.location.strip("/")) == (
        b.endpoint_url,
        b.bucket_name,
        b.location.strip("/"),
    )


def check_storage_options(
    storage: Any,
    *,
    batch_targets: Iterable[Target] = (),
    configured: Target | None = None,
) -> StorageOptions:
    """Check ``storage`` against the targets of the live batches (not dry runs, not rolled back)
    and against the target r2migrate is configured for (None: not compared)."""
    target = storage_target(storage)
    failures = list(_overwrite_failure(storage))
    failures += _target_failures(target, list(dict.fromkeys(batch_targets)), configured)
    return StorageOptions(target, tuple(failures), tuple(_notes(storage)), _shown(storage))


def _overwrite_failure(storage: Any) -> Iterable[str]:
    if getattr(storage, "file_overwrite", False):
        yield (
            "file_overwrite is True (django-storages' default): FileSystemStorage never "
            "overwrites, S3Storage then does, so a new upload or a derived file (thumbnail, "
            "rendition) with an existing name replaces a migrated object. "
            f"Fix: {FILE_OVERWRITE_FIX}."
        )


def _target_failures(
    target: Target, batch_targets: Sequence[Target], configured: Target | None
) -> Iterable[str]:
    if configured is not None and not _same(target, configured):
        yield (
            f"the storage uses {target.describe()}, but r2migrate is configured for "
            f"{configured.describe()}: the migration goes where the site will not look. Fix: "
            "remove the bucket_name/location/endpoint_url override from R2MIGRATE (or the "
            "flags), or point the storage's OPTIONS at the same target."
        )
    if batch_targets and not any(_same(target, t) for t in batch_targets):
        where = "; ".join(t.describe() for t in batch_targets)
        yield (
            f"the storage uses {target.describe()}, but the migrated batches are at {where}: "
            "after the switch the site would ask where nothing was migrated. Fix: give the "
            "storage's OPTIONS the batches' bucket_name, location and endpoint_url, or migrate "
            "to the storage's target (plan and run with these settings)."
        )


def _notes(storage: Any) -> Iterable[str]:
    acl = getattr(storage, "default_acl", None)
    if acl:
        yield (
            f"default_acl is {acl!r}, but r2migrate uploads without an ACL (R2 has none): on S3, "
            "objects that must be public need a bucket policy"
        )
    if getattr(storage, "gzip", False):
        yield (
            "gzip (AWS_IS_GZIPPED) is on: new uploads of text types are compressed; migrated "
            "objects were stored as they were on disk"
        )
    domain = getattr(storage, "custom_domain", None)
    if domain:
        yield (
            f"custom_domain is {domain!r}: url() points there, not at the bucket; that domain "
            "must serve this bucket (and location) for every migrated key"
        )
    if getattr(storage, "querystring_auth", False) and not domain:
        expire = getattr(storage, "querystring_expire", 3600)
        yield (
            f"querystring_auth is on: url() returns signed links that expire after {expire} s; "
            "links cached in pages or e-mails stop working (a public bucket wants it off)"
        )


def _shown(storage: Any) -> tuple[tuple[str, str], ...]:
    names = ("file_overwrite", "default_acl", "querystring_auth", "gzip", "custom_domain")
    return tuple((name, repr(getattr(storage, name, None))) for name in names)


def doctor_result(options: StorageOptions, where: str) -> tuple[str, str, str]:
    """``(status, detail, hint)`` of doctor's ``storage_options`` check: ``fail`` when an option
    breaks the site after the switch, ``warn`` when there is something to know, else ``ok``."""
    shown = ", ".join(f"{k}={v}" for k, v in options.shown)
    if options.failures:
        return (
            "fail",
            f"{where}: " + " ".join(options.failures),
            "Change the storage's OPTIONS as said, then run `manage.py r2migrate_cutover_check`.",
        )
    detail = f"{where} uses {options.target.describe()}; {shown}"
    if options.notes:
        return ("warn", detail + ". " + "; ".join(options.notes), "")
    return ("ok", detail, "")
