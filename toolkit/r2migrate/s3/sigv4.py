"""AWS Signature Version 4 for S3 requests, written out: the canonical request, the string to
sign and the derived key, so a request can be signed without botocore.

Must never send anything or read a file: it turns a method, path, headers and a date into the
signed headers (tests prove them equal to botocore's).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["UNSIGNED_PAYLOAD", "SigV4Signer", "canonical_uri"]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_ALGORITHM = "AWS4-HMAC-SHA256"
_SERVICE = "s3"


def canonical_uri(path: str) -> str:
    """``path`` percent-encoded as S3 wants: UTF-8, every byte but ``A-Za-z0-9-_.~/`` escaped.

    S3 signs the URI exactly as sent and never normalises it (no ``.``/``..`` folding, no
    double encoding), so this one string is both the request target and the canonical URI.
    """
    return quote(path, safe="/~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class SigV4Signer:
    """AWS Signature Version 4 for S3 headers; the day's signing key is derived once per date.

    Thread-safe: the cache is a dict whose entries are computed idempotently.
    """

    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        region: str,
        session_token: str | None = None,
        service: str = _SERVICE,
    ) -> None:
        self.access_key = access_key
        self._secret = secret_key
        self.region = region
        self.service = service
        self.session_token = session_token
        self._keys: dict[str, bytes] = {}

    def signing_key(self, date: str) -> bytes:
        """HMAC chain secret → date → region → service → ``aws4_request`` (``date`` YYYYMMDD)."""
        key = self._keys.get(date)
        if key is None:
            k_date = _hmac(f"AWS4{self._secret}".encode(), date)
            key = _hmac(_hmac(_hmac(k_date, self.region), self.service), "aws4_request")
            self._keys = {date: key}  # one day at a time; a new day replaces the old key
        return key

    def sign(
        self,
        method: str,
        uri: str,
        headers: Iterable[tuple[str, str]],
        *,
        amz_date: str,
        payload_hash: str = UNSIGNED_PAYLOAD,
        query: str = "",
    ) -> tuple[list[tuple[str, str]], str]:
        """Sign one request; ``headers`` are (lower-case name, value) pairs including ``host``.

        Returns the headers to send (the given ones plus ``x-amz-date``, ``x-amz-content-sha256``,
        ``x-amz-security-token`` when set, and ``authorization``) and the canonical request.
        Every given header is signed, as botocore signs every header it sends but a few.
        """
        signed = list(headers)
        signed.append(("x-amz-date", amz_date))
        signed.append(("x-amz-content-sha256", payload_hash))
        if self.session_token:
            signed.append(("x-amz-security-token", self.session_token))
        signed.sort()
        canonical_headers = "".join(f"{name}:{' '.join(value.split())}\n" for name, value in signed)
        signed_names = ";".join(name for name, _ in signed)
        canonical = f"{method}\n{uri}\n{query}\n{canonical_headers}\n{signed_names}\n{payload_hash}"
        date = amz_date[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{_ALGORITHM}\n{amz_date}\n{scope}\n"
            + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        )
        signature = hmac.new(
            self.signing_key(date), to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        signed.append(
            (
                "authorization",
                f"{_ALGORITHM} Credential={self.access_key}/{scope}, "
                f"SignedHeaders={signed_names}, Signature={signature}",
            )
        )
        return signed, canonical
