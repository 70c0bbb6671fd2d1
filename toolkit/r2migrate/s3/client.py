"""The boto3 S3 client: TLS verification (certificate checks or a CA bundle), the R2-safe
checksum settings, no hidden retries.

Must never send a request itself: ``bucket.py`` and ``fastput.py`` do; this only builds what
they send through.
"""

from __future__ import annotations

import logging
import ssl
import threading
import warnings
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from r2migrate.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from r2migrate.settings.model import Settings

__all__ = ["make_client", "ssl_context_for", "tls_hint", "tls_verify"]

log = logging.getLogger("r2migrate.s3.bucket")


def tls_verify(settings: Settings) -> bool | str:
    """botocore's ``verify``: False (no checks), True (certifi's bundle) or a CA bundle's path.

    A ``ca_bundle`` that is not a readable file is a ConfigError here, before any request, not
    an unreadable-bundle error on the first connection.
    """
    if not settings.verify:
        _warn_insecure_once(settings.effective_endpoint_url)
        return False
    if settings.ca_bundle is None:
        return True
    try:
        with settings.ca_bundle.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(
            f"ca_bundle {settings.ca_bundle}: {exc.strerror or exc}",
            hint="Point ca_bundle (or AWS_CA_BUNDLE) at a PEM file of CA certificates.",
        ) from exc
    return str(settings.ca_bundle)


_insecure_warned = threading.Event()


def _warn_insecure_once(endpoint: str | None) -> None:
    """`verify = false`: one warning per process, instead of urllib3's one per request."""
    import urllib3

    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    if not _insecure_warned.is_set():
        _insecure_warned.set()
        log.warning(
            "verify is false: TLS certificates of %s are not checked (this warning is shown once)",
            endpoint or "the endpoint",
        )


def tls_hint(settings: Settings) -> str:
    """What to do about a refused certificate, naming the bundle in use and where it came from."""
    if settings.ca_bundle is None:
        trusted = "certifi's CA bundle (ca_bundle is not set)"
    else:
        where = settings.sources.get("ca_bundle", "default")
        trusted = f"ca_bundle {settings.ca_bundle} (from {where})"
    return (
        f"The endpoint's certificate is not signed by a CA in {trusted}. Point ca_bundle "
        "(--set ca_bundle=PATH, R2MIGRATE_CA_BUNDLE or AWS_CA_BUNDLE) at the PEM file of the CA "
        "that signed it; `--set ca_bundle=` (empty) clears an inherited AWS_CA_BUNDLE; "
        "`r2migrate doctor` checks the bundle."
    )


def make_client(settings: Settings, *, max_pool_connections: int | None = None) -> S3Client:
    """A client with R2-safe checksum settings and no hidden retries (we record every attempt)."""
    config = Config(
        region_name=settings.effective_region_name or "us-east-1",
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},  # type: ignore[arg-type]
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
        # Every worker thread may send up to 4 parts of a large file at once (transfer).
        max_pool_connections=max_pool_connections or max(10, settings.workers * 4 + 4),
        # botocore >= 1.36 adds CRC checksums R2 has rejected; we send SHA-256 ourselves.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="r2migrate",
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.session_token,
    )
    client: S3Client = session.client(
        "s3",
        endpoint_url=settings.effective_endpoint_url,
        verify=tls_verify(settings),
        config=config,
    )
    return client


def ssl_context_for(verify: bool | str) -> ssl.SSLContext:
    """An ``ssl`` context for a ``tls_verify`` answer, like botocore's: the ``ca_bundle`` path
    alone, else certifi's bundle when installed, else the system store; False = no checks."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    try:
        import certifi
    except ImportError:  # pragma: no cover - botocore then uses its own bundle; we use the system's
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())
