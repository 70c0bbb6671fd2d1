"""Validation of a ``Settings``: every invalid value as ``(field, message)``, and name hints.

Must never read files, the environment or the network, and never echo a secret: a malformed
database URL or auth header is described, not shown. ``Settings.__post_init__`` calls
``check_settings``; ``closest``/``did_you_mean`` suggest the name a typo meant.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from r2migrate.errors import ConfigError
from r2migrate.settings.model import (
    _GIB,
    _HEADER_LINE,
    _LOG_LEVELS,
    _MIB,
    _RESERVED_OBJECT_PARAMETERS,
    redact_url,
)

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = [
    "DJANGO_ONLY_SETTINGS",
    "check_settings",
    "closest",
    "did_you_mean",
    "refuse_django_only",
]

# Settings that name Django models (``app_label.Model[.field]``): meaningful only where the model
# registry is, i.e. under the Django adapter. The plain CLI refuses them (``refuse_django_only``).
DJANGO_ONLY_SETTINGS = ("models", "exclude")


def closest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The one of ``choices`` that ``word`` most likely misspells, or None (difflib's ratio)."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Sequence[str] | Iterable[str], *, shown: str = "") -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``; ``shown`` replaces the name
    the hint quotes (such as the environment variable spelling the field)."""
    guess = closest(word, choices)
    if guess is None:
        return ""
    return f"; did you mean {shown or repr(guess)}?"


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")
_PARAMETER_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")


def check_settings(s: Settings) -> Iterable[tuple[str, str]]:
    """``(field, message)`` for every invalid value; ``field`` is '' for cross-field problems."""
    yield from _check_names(s)
    yield from _check_target(s)
    yield from _check_source(s)
    yield from _check_access(s)
    yield from _check_numbers(s)


def _check_names(s: Settings) -> Iterable[tuple[str, str]]:
    """The database URL and the SQL names."""
    if s.database_url is not None:
        scheme = s.database_url.partition("://")[0].lower() if "://" in s.database_url else ""
        if scheme not in ("postgresql", "postgres"):
            # Never echo the value: a malformed URL may still hold a password.
            yield "database_url", "must be a postgresql:// or postgres:// URL (value not shown)"
    if not _IDENTIFIER.fullmatch(s.state_schema):
        yield (
            "state_schema",
            f"must be a SQL identifier (letters, digits, _), got {s.state_schema!r}",
        )
    if not s.references:
        yield "references", "needs at least one table.column"
    for ref in s.references:
        names = ref.split(".")
        if len(names) not in (2, 3) or not all(_IDENTIFIER.fullmatch(n) for n in names):
            yield "references", f"{ref!r} is not table.column or schema.table.column"
    if len(set(s.references)) != len(s.references):
        yield "references", "lists the same column twice"
    if not _IDENTIFIER.fullmatch(s.reference_id_column):
        yield "reference_id_column", f"must be a SQL identifier, got {s.reference_id_column!r}"
    for name in DJANGO_ONLY_SETTINGS:
        for entry in getattr(s, name):
            parts = entry.split(".")
            if len(parts) not in (2, 3) or not all(_IDENTIFIER.fullmatch(p) for p in parts):
                yield name, f"{entry!r} is not app_label.Model or app_label.Model.field"


def _check_target(s: Settings) -> Iterable[tuple[str, str]]:
    """Where the objects go: bucket, key prefix, endpoint."""
    if s.bucket_name is not None:
        name = s.bucket_name
        if not _BUCKET.fullmatch(name) or ".." in name or _IPV4.fullmatch(name):
            yield (
                "bucket_name",
                f"{name!r} is not a valid bucket name (3-63 characters: lowercase letters, "
                "digits, dots and hyphens, starting and ending with a letter or digit)",
            )
    if "\x00" in s.location or s.location.startswith("/"):
        yield "location", f"must be a relative key prefix, got {s.location!r}"
    if s.endpoint_url is not None:
        try:
            parts = urlsplit(s.endpoint_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            yield "endpoint_url", f"must be an http(s) URL, got {redact_url(s.endpoint_url)!r}"


def _check_access(s: Settings) -> Iterable[tuple[str, str]]:
    """Region, account, credentials, TLS and the extra object parameters."""
    if s.region_name is not None and not re.fullmatch(r"[a-z0-9-]+", s.region_name):
        yield "region_name", f"must look like 'auto' or 'us-east-1', got {s.region_name!r}"
    if s.r2_account_id is not None and not _ACCOUNT_ID.fullmatch(s.r2_account_id):
        yield "r2_account_id", f"must be 32 lowercase hex characters, got {s.r2_account_id!r}"
    if bool(s.access_key) != bool(s.secret_key):
        given, absent = (
            ("access_key", "secret_key") if s.access_key else ("secret_key", "access_key")
        )
        yield "", f"{given} is set but {absent} is not: set both or neither"
    if s.session_token and not s.access_key:
        yield "", "session_token is set without access_key and secret_key"
    if s.addressing_style not in ("path", "virtual"):
        yield "addressing_style", f"must be 'path' or 'virtual', got {s.addressing_style!r}"
    if s.ca_bundle is not None and not s.verify:
        yield (
            "ca_bundle",
            "is set but verify is false, so no certificate would be checked: unset one of them",
        )
    for key in s.object_parameters:
        if key in _RESERVED_OBJECT_PARAMETERS:
            yield (
                "object_parameters",
                f"{key!r} is set by r2migrate itself and cannot be overridden",
            )
        elif not _PARAMETER_NAME.fullmatch(key):
            yield "object_parameters", f"{key!r} is not a put_object parameter name (CacheControl)"


def _check_numbers(s: Settings) -> Iterable[tuple[str, str]]:
    """Sizes, counts, timeouts and the log choices."""
    yield from _check_range("batch_size", s.batch_size, 1, 10_000)
    yield from _check_range("workers", s.workers, 1, 1024)
    yield from _check_range("processes", s.processes, 0, 256)
    yield from _check_range("max_attempts", s.max_attempts, 1, 20)
    yield from _check_range("backoff_base_s", s.backoff_base_s, 0, 3600)
    yield from _check_range("backoff_max_s", s.backoff_max_s, 0, 3600)
    if s.backoff_max_s < s.backoff_base_s:
        yield "backoff_max_s", f"must be at least backoff_base_s ({s.backoff_base_s})"
    yield from _check_range(
        "multipart_threshold_bytes", s.multipart_threshold_bytes, 5 * _MIB, 5 * _GIB
    )
    yield from _check_range(
        "multipart_chunksize_bytes", s.multipart_chunksize_bytes, 5 * _MIB, 5 * _GIB
    )
    yield from _check_positive("connect_timeout_s", s.connect_timeout_s)
    yield from _check_positive("read_timeout_s", s.read_timeout_s)
    yield from _check_positive("lease_s", s.lease_s)
    if s.lease_s <= s.read_timeout_s:
        # Otherwise another runner may take a file over while its PUT is still legitimately waiting.
        yield "lease_s", f"must be longer than read_timeout_s ({s.read_timeout_s})"
    if s.stalled_worker_s < 1:
        # Heartbeats go every third of it; below a second they would cost more than they tell.
        yield "stalled_worker_s", f"must be at least 1 second, got {s.stalled_worker_s}"
    if s.log_level not in _LOG_LEVELS:
        yield "log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}"
    if s.log_format not in ("text", "json"):
        yield "log_format", f"must be 'text' or 'json', got {s.log_format!r}"


def _check_source(s: Settings) -> Iterable[tuple[str, str]]:
    if s.source not in ("disk", "http"):
        yield "source", f"must be 'disk' or 'http', got {s.source!r}"
    if s.media_url is not None:
        try:
            parts = urlsplit(s.media_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            userinfo = "@" in parts.netloc
            extra = bool(parts.query or parts.fragment)
        except ValueError:
            ok, userinfo, extra = False, False, False
        shown = redact_url(s.media_url)
        if not ok:
            yield "media_url", f"must be an absolute http(s) URL, got {shown!r}"
        elif userinfo:
            yield (
                "media_url",
                "must not hold a user or password (value not shown); put credentials in "
                "media_auth_header (R2MIGRATE_MEDIA_AUTH_HEADER), which is kept secret",
            )
        elif extra:
            yield "media_url", f"must not have a query or fragment, got {shown!r}"
    if s.media_auth_header is not None and not _HEADER_LINE.fullmatch(s.media_auth_header):
        yield (
            "media_auth_header",
            "must be one 'Header-Name: value' line, such as 'Authorization: Bearer ...' "
            "(value not shown)",
        )
    if s.source == "http" and s.media_url is None:
        yield (
            "media_url",
            "is required when source is 'http': the application's MEDIA_URL as an absolute URL "
            "(--media-url https://app.example.com/media/)",
        )


def _check_range(name: str, value: float, low: float, high: float) -> Iterable[tuple[str, str]]:
    if not low <= value <= high:
        yield name, f"must be between {low:,} and {high:,}, got {value:,}"


def _check_positive(name: str, value: float) -> Iterable[tuple[str, str]]:
    if not value > 0:
        yield name, f"must be more than 0 seconds, got {value}"


def refuse_django_only(s: Settings) -> None:
    """Raise ``ConfigError`` when ``models``/``exclude`` are set where no Django project is
    loaded: they name Django models, and dropping them silently would migrate too much."""
    given = [name for name in DJANGO_ONLY_SETTINGS if getattr(s, name)]
    if not given:
        return
    where = ", ".join(f"{name} ({s.sources.get(name, 'argument')})" for name in given)
    raise ConfigError(
        f"{where}: names Django models, which only the Django adapter can resolve "
        "(manage.py migrate_files_to_r2 and the other manage.py commands).",
        hint="Outside Django, list exactly the columns to migrate in `references` "
        "(table.column) and unset models/exclude; under Django put them in settings.py's "
        "R2MIGRATE.",
    )
