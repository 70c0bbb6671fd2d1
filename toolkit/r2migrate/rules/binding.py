"""What a batch is bound to: its target (endpoint, bucket, location) and its source (disk or URL).

Must not open connections, files or sockets: it compares settings with what a batch recorded.

A batch records both at plan time, and every later command (run, verify, rollback, status, the
worker, the API, the Django command, the notebooks) acts on the batch's own target and source,
never on whatever the settings say today. ``settings_for_batch`` fills what the settings leave
unset from the batch and refuses, naming both sides, when a set value disagrees: a rollback
must never delete in a bucket the batch did not write to, and a run must never read another
MEDIA_ROOT than the one the inventory measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from r2migrate.errors import ConfigError, TargetMismatch
from r2migrate.settings.model import Settings, redact_url

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_endpoint(url: str | None) -> str:
    """One spelling per endpoint: lower-case scheme and host, no default port, no trailing '/'.

    ``""`` stands for AWS's own endpoint (no ``endpoint_url`` and no ``r2_account_id``).
    """
    if not url:
        return ""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def normalize_media_url(url: str | None) -> str | None:
    """A media URL compared as a folder: the same normalisation, always one trailing '/'."""
    if not url:
        return None
    return normalize_endpoint(url) + "/"


@dataclass(frozen=True)
class Target:
    """Where a batch's objects live. ``object_key`` already holds ``location``."""

    endpoint_url: str  # normalised; "" = AWS's default endpoint
    bucket_name: str
    location: str

    @property
    def target_id(self) -> str:
        """The ledger's name for the namespace of keys: one live row per (target_id, key)."""
        return f"{self.endpoint_url or 'aws'}/{self.bucket_name}"

    def describe(self) -> str:
        where = redact_url(self.endpoint_url) if self.endpoint_url else "AWS S3"
        loc = f", location {self.location!r}" if self.location else ""
        return f"bucket {self.bucket_name!r} at {where}{loc}"


@dataclass(frozen=True)
class SourceSpec:
    """Where a batch's bytes are read: ``disk`` under ``media_root``, or ``http`` under a URL."""

    kind: str  # "disk" | "http"
    media_root: str | None = None  # absolute, resolved
    media_url: str | None = None  # normalised, ends with '/'

    @property
    def where(self) -> str:
        """The folder or URL alone, as an inventory snapshot records its source."""
        return (self.media_url if self.kind == "http" else self.media_root) or ""

    def describe(self) -> str:
        if self.kind == "http":
            return f"media URL {redact_url(self.media_url or '')}"
        return f"MEDIA_ROOT {self.media_root}"


def target_of(settings: Settings) -> Target:
    """The configured target; ``bucket_name`` must be set."""
    settings.require("bucket_name")
    assert settings.bucket_name is not None
    return Target(
        normalize_endpoint(settings.effective_endpoint_url),
        settings.bucket_name,
        settings.location,
    )


def source_of(settings: Settings) -> SourceSpec:
    """The configured source (what plan records with each batch)."""
    if settings.source == "http":
        return SourceSpec("http", media_url=normalize_media_url(settings.media_url))
    root = str(Path(settings.media_root).resolve()) if settings.media_root is not None else None
    return SourceSpec("disk", media_root=root)


class _Bound(Protocol):
    """What ``state.Batch`` exposes of its binding (without importing ``state``)."""

    @property
    def batch_id(self) -> str: ...
    @property
    def target(self) -> Target: ...
    @property
    def source(self) -> SourceSpec: ...


B = TypeVar("B", bound=_Bound)


def queue_name(target: Target, source: SourceSpec) -> str:
    """The worker queue of one target and source: a worker takes only the batches it can run."""
    spelled = "\n".join(
        (
            target.target_id,
            target.location,
            source.kind,
            source.media_root or "",
            source.media_url or "",
        )
    )
    return "batches-" + hashlib.sha256(spelled.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def settings_for_batch(settings: Settings, batch: _Bound, *, need_source: bool = True) -> Settings:
    """``settings`` acting on ``batch``'s own target and source; raise if a set value differs.

    A setting left unset (no bucket, no endpoint, location and source at their defaults, no
    media_root/media_url) takes the batch's value; one that is set must equal it. With
    ``need_source=False`` (a rollback, which reads the source only for a row without a
    recorded SHA-256) the batch's source is used without comparing it.
    """
    differences: list[str] = []
    target, recorded = batch.target, batch.source
    updates: dict[str, object] = {}
    sources = dict(settings.sources)

    def take(name: str, value: object) -> None:
        updates[name] = value
        sources[name] = f"batch {batch.batch_id}"

    if settings.bucket_name is None:
        take("bucket_name", target.bucket_name)
    elif settings.bucket_name != target.bucket_name:
        differences.append(f"bucket: {target.bucket_name!r} (batch) vs {settings.bucket_name!r}")
    configured_endpoint = settings.effective_endpoint_url
    if configured_endpoint is None:
        if target.endpoint_url:
            take("endpoint_url", target.endpoint_url)
    elif normalize_endpoint(configured_endpoint) != target.endpoint_url:
        differences.append(
            f"endpoint: {_show_endpoint(target.endpoint_url)} (batch) vs "
            f"{_show_endpoint(normalize_endpoint(configured_endpoint))}"
        )
    if settings.sources.get("location", "default") == "default" and not settings.location:
        if target.location:
            take("location", target.location)
    elif settings.location != target.location:
        differences.append(f"location: {target.location!r} (batch) vs {settings.location!r}")

    source_configured = (
        settings.sources.get("source", "default") != "default"
        or settings.media_root is not None
        or settings.media_url is not None
    )
    if not source_configured or not need_source:
        take("source", recorded.kind)
        if recorded.media_root is not None:
            take("media_root", Path(recorded.media_root))
        if recorded.media_url is not None:
            take("media_url", recorded.media_url)
    else:
        configured = source_of(settings)
        if recorded != configured:
            differences.append(f"source: {recorded.describe()} (batch) vs {configured.describe()}")
    if differences:
        raise TargetMismatch(
            [
                f"Batch {batch.batch_id} was planned for another target or source than the "
                "settings name; nothing was done.",
                *differences,
            ],
            hint=(
                f"Act on the batch where it was planned ({target.describe()}; "
                f"{recorded.describe()}): drop or correct the differing settings "
                "(`r2migrate config show` says where each comes from). To migrate to a new "
                "target, plan again there: `r2migrate plan`."
            ),
        )
    updates = {k: v for k, v in updates.items() if getattr(settings, k) != v}
    if not updates:
        return settings
    updates["sources"] = sources
    try:
        return dataclasses.replace(settings, **updates)  # type: ignore[arg-type]
    except ConfigError as exc:  # the batch's record is not a valid setting any more
        raise TargetMismatch(exc.problems, hint=exc.hint) from exc


def split_by_binding(
    settings: Settings, batches: Iterable[B], *, need_source: bool = True
) -> tuple[list[B], list[B]]:
    """``(the configured target's batches, the others)``, each in the given order.

    For ``--all``: the settings must name the target (and, with ``need_source``, the source),
    and a batch belongs to it when the two are equal, so every batch kept shares one target.
    """
    target = target_of(settings)
    source = source_of(settings)
    mine: list[B] = []
    others: list[B] = []
    for batch in batches:
        same = batch.target == target and (not need_source or batch.source == source)
        (mine if same else others).append(batch)
    return mine, others


def left_out_note(others: Sequence[_Bound]) -> str:
    """One sentence for ``--all``: how many batches of other targets were not touched."""
    if not others:
        return ""
    targets = sorted({b.target.describe() for b in others})
    shown = "; ".join(targets[:3]) + ("; ..." if len(targets) > 3 else "")
    return (
        f"{len(others)} batch(es) of another target or source were left out ({shown}); "
        "point the settings at that target to act on them."
    )


def _show_endpoint(endpoint: str) -> str:
    return redact_url(endpoint) if endpoint else "AWS S3"
