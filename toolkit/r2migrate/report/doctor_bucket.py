"""Doctor's bucket checks: CA bundle, bucket, clock skew, and the probe objects' round trip.

Must not touch any object but its own probes under ``<location>/.r2migrate-doctor/<uuid>/``:
create-only PUTs, HEADs and If-Match DELETEs; ``_check_cleanup`` removes what is left.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from r2migrate.errors import (
    BucketError,
    BucketUnavailable,
    DigestMismatch,
    ObjectChanged,
    ObjectExists,
    TransientBucketError,
)
from r2migrate.report.doctor_base import _FAIL, _OK, _SKIP, _WARN, _DoctorBase, _Result
from r2migrate.s3.bucket import sha256_b64, tls_hint, tls_verify
from r2migrate.settings.config import redact_url

CLOCK_WARN_S = 60.0
CLOCK_FAIL_S = 15 * 60.0  # SigV4 rejects a request signed more than 15 minutes off
CLEANUP_ATTEMPTS = 4  # HEAD + DELETE rounds per leftover probe object
CLEANUP_BACKOFF_S = 0.25  # doubled per round: 0.25 + 0.5 + 1 + 2 s at most
_WRONG_ETAG = '"00000000000000000000000000000000"'  # no object has this ETag (MD5 of nothing ≠ 0)


class _BucketChecks(_DoctorBase):
    def _check_ca_bundle(self) -> _Result:
        """The CA bundle: readable, PEM, and the endpoint's certificate verifies against it."""
        s = self._settings()
        endpoint = s.effective_endpoint_url or ""
        where = s.sources.get("ca_bundle", "default")
        if not s.verify:
            return (_SKIP, "verify is false: no certificate is checked", "")
        if s.ca_bundle is None:
            from botocore.httpsession import get_cert_path

            context = ssl.create_default_context(cafile=get_cert_path(True))
            named = "certifi's CA bundle (ca_bundle is not set)"
        else:
            named = f"ca_bundle {s.ca_bundle} (from {where})"
            try:
                pem = s.ca_bundle.read_bytes()
            except OSError as exc:
                return (
                    _FAIL,
                    f"{named} cannot be read: {exc.strerror or exc}",
                    "Point ca_bundle at a readable PEM file of CA certificates, or clear it "
                    "(`--set ca_bundle=`, or unset AWS_CA_BUNDLE) to use certifi's bundle.",
                )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                context.load_verify_locations(cadata=pem.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError):
                return (
                    _FAIL,
                    f"{named} is not a PEM file of CA certificates "
                    "('-----BEGIN CERTIFICATE-----' blocks)",
                    "Point ca_bundle at the PEM file of the CA that signed the endpoint's "
                    "certificate, or clear it (`--set ca_bundle=`, or unset AWS_CA_BUNDLE).",
                )
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            return (_OK, f"{named} is valid; the endpoint is not HTTPS", "")
        try:
            with (
                socket.create_connection(
                    (parts.hostname, parts.port or 443), timeout=s.connect_timeout_s
                ) as raw,
                context.wrap_socket(raw, server_hostname=parts.hostname),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (
                _FAIL,
                f"{redact_url(endpoint)}'s certificate does not verify against {named}: "
                f"{exc.verify_message or exc}",
                tls_hint(s),
            )
        except (OSError, ssl.SSLError) as exc:
            return (_WARN, f"{named} is valid; the endpoint did not answer TLS: {exc}", "")
        return (_OK, f"{redact_url(endpoint)}'s certificate verifies against {named}", "")

    def _check_bucket(self) -> _Result:
        bucket = self._bucket()
        started = time.perf_counter()
        try:
            bucket.check()
        except BucketUnavailable:
            self.endpoint_unreachable = True
            raise
        except BucketError as exc:
            self.bucket_denied = exc.code != "NoSuchBucket"
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        endpoint = redact_url(self._settings().effective_endpoint_url or "")
        return (_OK, f"HEAD bucket {bucket.name} at {endpoint} in {elapsed_ms:.0f} ms", "")

    def _check_clock(self) -> _Result:
        if self.endpoint_unreachable:
            return (_SKIP, "needs the endpoint to answer (see bucket)", "")
        s = self._settings()
        endpoint = s.effective_endpoint_url or ""
        before = time.time()
        try:
            date = _server_date(endpoint, verify=tls_verify(s), timeout_s=s.connect_timeout_s)
        except BucketUnavailable as exc:
            return (
                _WARN,
                f"clock skew not measured: {exc.message}",
                "Make sure this machine's clock is synchronised (NTP).",
            )
        after = time.time()
        if date is None:
            return (
                _WARN,
                "the server sent no Date header: clock skew not measured",
                "Make sure this machine's clock is synchronised (NTP).",
            )
        # Date has whole seconds: the server's time lies in [date, date + 1).
        skew_s = date + 0.5 - (before + after) / 2
        margin_s = 0.5 + (after - before) / 2
        size = abs(skew_s)
        if size <= margin_s:
            return (_OK, f"in step with the server's clock (within {margin_s:.1f} s)", "")
        way = "behind" if skew_s > 0 else "ahead of"
        detail = f"this machine is {size:.0f} s {way} the server's clock (±{margin_s:.1f} s)"
        if size > CLOCK_FAIL_S:
            why = " This is why the bucket check was denied." if self.bucket_denied else ""
            return (
                _FAIL,
                detail,
                "S3 signatures are refused more than 15 minutes off (RequestTimeTooSkewed): "
                "synchronise the clock (NTP, e.g. `timedatectl set-ntp true`)." + why,
            )
        if size > CLOCK_WARN_S:
            return (
                _WARN,
                detail,
                "Synchronise the clock (NTP); at 15 minutes off every request is refused.",
            )
        return (_OK, detail, "")

    # -- the probe --------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, sha256_hex: str) -> str:
        self.written.setdefault(key, set()).add(sha256_hex)
        result = self._bucket().put_object_checked(
            key, body, sha256_hex=sha256_hex, content_type="text/plain"
        )
        return result.etag

    def _check_probe_put(self) -> _Result:
        self._put(self.probe_key, self.probe_body, self.probe_sha)
        return (
            _OK,
            f"create-only PUT with ChecksumSHA256 of {len(self.probe_body)} bytes "
            f"to {self.probe_key}",
            "",
        )

    def _check_probe_head(self) -> _Result:
        info = self._bucket().head(self.probe_key)
        if info is None:
            return (
                _FAIL,
                "HEAD found no object right after the PUT",
                "r2migrate needs read-after-write consistency (R2 and S3 have it).",
            )
        wrong = []
        if info.size_bytes != len(self.probe_body):
            wrong.append(f"size {info.size_bytes} instead of {len(self.probe_body)}")
        if info.sha256_hex != self.probe_sha:
            wrong.append("x-amz-meta-sha256 missing or different")
        stored = info.checksum_sha256
        if stored and stored != sha256_b64(self.probe_sha):
            wrong.append("the server stored another ChecksumSHA256")
        if wrong:
            return (
                _FAIL,
                "HEAD after PUT: " + "; ".join(wrong),
                "r2migrate proves an object is its own by this metadata; the server must keep "
                "user metadata (x-amz-meta-*) unchanged.",
            )
        reported = (
            "the server reports ChecksumSHA256 too"
            if stored
            else "the server does not report ChecksumSHA256 on HEAD"
        )
        return (_OK, f"HEAD shows size and our sha256 metadata; {reported}", "")

    def _check_if_none_match(self) -> _Result:
        body = self.probe_body + b"second write: must be refused\n"
        hint = (
            "r2migrate promises never to overwrite an object (PUT If-None-Match: *); "
            "do not migrate to this server until it refuses the second write with 412."
        )
        try:
            self._put(self.probe_key, body, hashlib.sha256(body).hexdigest())
        except ObjectExists:
            return (
                _OK,
                "a second PUT to the probe key was refused (412): writes are create-only",
                "",
            )
        except BucketError as exc:
            return (_FAIL, f"create-only PUT not confirmed: {exc.message}", hint)
        return (_FAIL, "the server overwrote the probe object despite If-None-Match: *", hint)

    def _check_checksum(self) -> _Result:
        body = self.probe_body + b"wrong checksum: must be refused\n"
        wrong_hex = hashlib.sha256(b"not " + body).hexdigest()
        try:
            self._put(self.bad_digest_key, body, wrong_hex)
        except DigestMismatch:
            return (
                _OK,
                "a PUT with a wrong ChecksumSHA256 was refused (BadDigest): SHA-256 is checked "
                "on upload",
                "",
            )
        except BucketError as exc:
            return (
                _WARN,
                f"SHA-256 enforcement not confirmed: {exc.message}",
                "Run `r2migrate verify --deep` after each batch to re-hash the objects.",
            )
        return (
            _WARN,
            "the server accepted a PUT whose ChecksumSHA256 did not match the body: SHA-256 is "
            "not enforced server-side",
            "Uploads are still hashed locally, but only `r2migrate verify --deep` (GET and "
            "re-hash) proves the bytes arrived intact on this server.",
        )

    def _check_conditional_delete(self) -> _Result:
        hint = (
            "Rollback deletes with If-Match so a replaced object is never deleted; on this "
            "server that window stays open: avoid writing the bucket while rolling back."
        )
        try:
            self._bucket().delete_if_match(self.probe_key, _WRONG_ETAG)
        except ObjectChanged:
            return (_OK, "a DELETE with a wrong If-Match was refused (412)", "")
        except BucketError as exc:
            return (_WARN, f"conditional DELETE not confirmed: {exc.message}", hint)
        self.probe_deleted_early = self._bucket().head(self.probe_key) is None
        gone = " and deleted the probe object" if self.probe_deleted_early else ""
        return (_WARN, f"the server ignored If-Match on DELETE{gone}", hint)

    def _check_probe_delete(self) -> _Result:
        bucket = self._bucket()
        info = bucket.head(self.probe_key)
        if info is None:
            if self.probe_deleted_early:
                return (_OK, "already deleted by the DELETE the server did not refuse", "")
            return (_FAIL, "the probe object vanished before its DELETE", "")
        bucket.delete_if_match(self.probe_key, info.etag)
        if bucket.head(self.probe_key) is not None:
            return (
                _FAIL,
                "DELETE with If-Match was answered but the object is still there",
                "Rollback could not remove objects on this server.",
            )
        return (_OK, "DELETE with If-Match on its ETag; HEAD confirms it is gone", "")

    def _check_cleanup(self) -> _Result:
        if not self.written:
            return (_SKIP, "nothing was written", "")
        removed: list[str] = []
        failures: list[str] = []
        for key, digests in self.written.items():
            outcome, reason = self._remove(key, digests)
            if outcome == "removed":
                removed.append(f"{key} ({reason})")
            elif outcome == "left":
                self.leftovers.append(key)
                failures.append(f"{key} ({reason})")
        if failures:
            return (
                _FAIL,
                f"{len(failures)} probe object(s) left in bucket {self._bucket().name}: "
                + ", ".join(failures),
                "Delete them once the server accepts deletes (e.g. `aws s3 rm "
                f"s3://{self._bucket().name}/{self.leftovers[0]}`); doctor wrote nothing else.",
            )
        if removed:
            return (
                _OK,
                f"removed what a failed step left: {', '.join(removed)}; nothing left under "
                f"{self.prefix}/",
                "",
            )
        return (_OK, f"nothing left under {self.prefix}/ ({len(self.written)} key(s) checked)", "")

    def _remove(self, key: str, digests: set[str]) -> tuple[str, str]:
        """("absent" | "removed" | "left", why): HEAD, and delete only an object we wrote."""
        bucket = self._bucket()
        deletes = 0
        last = "still present after the DELETEs"
        for round_ in range(CLEANUP_ATTEMPTS + 1):
            if round_:
                time.sleep(CLEANUP_BACKOFF_S * 2 ** (round_ - 1))
            try:
                info = bucket.head(key)
                if info is None:
                    return ("removed", f"after {deletes} DELETE(s)") if deletes else ("absent", "")
                if round_ == CLEANUP_ATTEMPTS:
                    break  # the last round only looks
                if info.sha256_hex not in digests:
                    return ("left", "holds an object doctor did not write: left alone")
                deletes += 1
                bucket.delete_if_match(key, info.etag)
            except (TransientBucketError, ObjectChanged) as exc:
                last = exc.message
            except BucketError as exc:
                return ("left", exc.message)
        return ("left", last)


def _server_date(endpoint_url: str, *, verify: bool | str, timeout_s: float) -> float | None:
    """The endpoint's ``Date`` header (epoch seconds) from an unsigned HEAD; None when absent.

    Unsigned on purpose: it answers even when the clock is so far off that signed requests are
    refused, which is when the number matters most. Any status (403, 405) carries the header.
    """
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(endpoint_url, method="HEAD")  # noqa: S310 (http(s) checked by config)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            value = response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        value = exc.headers.get("Date")
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BucketUnavailable(
            f"Cannot reach the S3 endpoint to read its clock: {reason}"
        ) from exc
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
