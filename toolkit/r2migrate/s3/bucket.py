"""The bucket side, the only boto3 user: create-only PUT with SHA-256, multipart, HEAD, GET.

Must not touch the database, batches or decide what to upload; botocore errors are translated here
and nowhere else, into the error tree with ``retryable`` set.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import ssl
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import botocore.exceptions
import urllib3.exceptions

from r2migrate.errors import (
    AccessDenied,
    BucketError,
    BucketUnavailable,
    CertificateRefused,
    ConfigError,
    DigestMismatch,
    NoSuchBucket,
    ObjectChanged,
    ObjectExists,
    TransientBucketError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from r2migrate.settings.model import Settings

from r2migrate.s3.client import make_client, tls_hint, tls_verify
from r2migrate.s3.multipart import (
    _HASH_BLOCK_BYTES,
    MAX_PARTS,
    MIN_PART_BYTES,
    FileRegion,
    PartSender,
    SourceMoved,
    SourceShort,
    SourceUnreadable,
    _check_unchanged,
    _is_regular_file,
    _PartWindow,
    _source_changed,
    part_size_for,
    sha256_b64,
)

__all__ = [
    "DENIED_CODES",
    "DIGEST_CODES",
    "MAX_PARTS",
    "MIN_PART_BYTES",
    "SHA256_METADATA_KEY",
    "TRANSIENT_CODES",
    "Bucket",
    "FileRegion",
    "ObjectInfo",
    "PartSender",
    "PutResult",
    "SourceMoved",
    "SourceShort",
    "SourceUnreadable",
    "make_client",
    "part_size_for",
    "sha256_b64",
    "tls_hint",
    "tls_verify",
    "translate_error",
]

log = logging.getLogger(__name__)

SHA256_METADATA_KEY = "sha256"  # sent as x-amz-meta-sha256, hex digest of the whole file

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)
DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"}
)
DIGEST_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size_bytes: int
    etag: str
    sha256_hex: str | None  # from our metadata; None when the object is not ours
    checksum_sha256: str | None  # what the server stored (base64), when it reports it
    content_type: str | None
    content_encoding: str | None
    last_modified: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PutResult:
    etag: str
    part_size_bytes: int | None = None


def translate_error(exc: Exception, *, op: str, bucket: str, key: str | None = None) -> BucketError:
    """Map a botocore exception onto the tree; callers `raise translate_error(...) from exc`.

    What is no S3 failure (a TypeError, a KeyError: a bug, not a failed file) is raised again as
    it is, from here: only botocore's errors, urllib3's and the OS's network errors are mapped.
    """
    where = f"{op} s3://{bucket}/{key}" if key is not None else f"{op} s3://{bucket}"
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(err.get("Message") or code or status)
        if code in ("PreconditionFailed", "412") or status == 412:
            if op.startswith("DELETE"):
                return ObjectChanged(
                    f"{where}: the object changed since it was checked", code="PreconditionFailed"
                )
            return ObjectExists(
                f"{where}: the key already holds an object", code="PreconditionFailed"
            )
        if code in DIGEST_CODES:
            return DigestMismatch(f"{where}: the server rejected the SHA-256 ({code})", code=code)
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return NoSuchBucket(f"Bucket {bucket!r} does not exist", code="NoSuchBucket")
        if code in DENIED_CODES or status == 403:
            return AccessDenied(f"{where}: access denied ({code or status})", code=code or "403")
        if code in TRANSIENT_CODES or status in (429, 500, 502, 503, 504) or status >= 500:
            return TransientBucketError(f"{where}: {code or status}: {message}", code=code)
        return BucketError(f"{where}: {code or status}: {message}", code=code)
    if isinstance(exc, botocore.exceptions.SSLError | ssl.SSLError):
        return CertificateRefused(f"{where}: SSLError: {exc}", code="SSLError")
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError
        | botocore.exceptions.ConnectionClosedError
        | botocore.exceptions.ProxyConnectionError
        | botocore.exceptions.ResponseStreamingError
        | botocore.exceptions.IncompleteReadError,
    ):
        return TransientBucketError(f"{where}: {type(exc).__name__}: {exc}", code="network")
    if isinstance(exc, botocore.exceptions.HTTPClientError | ConnectionError | TimeoutError):
        return TransientBucketError(f"{where}: {type(exc).__name__}: {exc}", code="network")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(f"{where}: no credentials configured", code="NoCredentials")
    if isinstance(exc, botocore.exceptions.BotoCoreError | urllib3.exceptions.HTTPError | OSError):
        return BucketError(f"{where}: {type(exc).__name__}: {exc}", code=type(exc).__name__)
    raise exc


class Bucket:
    """One bucket through one client. Thread-safe: boto3 clients may be shared between threads."""

    def __init__(self, settings: Settings, *, client: S3Client | None = None) -> None:
        if not settings.bucket_name:
            raise ConfigError(
                "No bucket configured.",
                hint="Set bucket_name in r2migrate.toml or R2MIGRATE_BUCKET_NAME.",
            )
        self.name: str = settings.bucket_name
        self.endpoint_url = settings.effective_endpoint_url
        self._settings = settings
        self._client = client
        self._client_lock = threading.Lock()
        if client is None:
            tls_verify(settings)  # an unreadable ca_bundle is a ConfigError now, not at first use
        self.object_parameters = dict(settings.object_parameters)
        self.tls_hint = tls_hint(settings)

    @property
    def client(self) -> S3Client:
        """The boto3 client, made on first use (~0.1 s of CPU): fastput's uploads need none."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = make_client(self._settings)
                client = self._client
        return client

    def _error(
        self, exc: Exception, *, op: str, bucket: str, key: str | None = None
    ) -> BucketError:
        """``translate_error``, with a refused certificate's hint naming this client's bundle."""
        err = translate_error(exc, op=op, bucket=bucket, key=key)
        if isinstance(err, CertificateRefused):
            err.hint = self.tls_hint
        return err

    @classmethod
    def for_settings(cls, settings: Settings, given: Bucket | None = None) -> Bucket:
        """`given` when it is the bucket `settings` name (same name and endpoint), else a new one.

        A caller may hand a stage a bucket made from the configured settings; a stage acting on
        a batch bound elsewhere must never send to it.
        """
        if (
            given is not None
            and given.name == settings.bucket_name
            and given.endpoint_url == settings.effective_endpoint_url
        ):
            return given
        return cls(settings)

    # -- whole-bucket ---------------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the bucket: NoSuchBucket, AccessDenied, or BucketUnavailable when unreachable."""
        try:
            self.client.head_bucket(Bucket=self.name)
        except Exception as exc:
            err = self._error(exc, op="HEAD bucket", bucket=self.name)
            if isinstance(err, TransientBucketError):
                raise BucketUnavailable(
                    f"Cannot reach the S3 endpoint for bucket {self.name!r}: {err.message}"
                ) from exc
            raise err from exc

    def create(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.name)
        except Exception as exc:
            raise self._error(exc, op="CREATE bucket", bucket=self.name) from exc

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix, paged."""
        for page in self.iter_object_pages(prefix):
            yield from page

    def iter_object_pages(self, prefix: str = "") -> Iterator[list[tuple[str, int]]]:
        """(key, size) of every object under prefix, one list per LIST request.

        Each page is one ListObjectsV2 call (a Class A operation on R2), so a caller can count
        what a listing cost and keep only one page (up to 1,000 keys) in memory.
        """
        token: str | None = None
        while True:
            page, token = self.list_page(prefix, token)
            yield page
            if token is None:
                return

    def list_page(
        self, prefix: str = "", token: str | None = None
    ) -> tuple[list[tuple[str, int]], str | None]:
        """One ListObjectsV2 call: (key, size) of up to 1,000 objects, and the token of the next
        page (None after the last). A failed page can be asked again with the same token."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            page = self.client.list_objects_v2(**kwargs)
        except Exception as exc:
            raise self._error(exc, op="LIST", bucket=self.name, key=prefix) from exc
        items = [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
        following = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return items, following or None

    # -- one object -----------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and our SHA-256 metadata; None when there is no object."""
        try:
            resp = self.client.head_object(Bucket=self.name, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status == 404 and code != "NoSuchBucket":
                return None
            raise self._error(exc, op="HEAD", bucket=self.name, key=key) from exc
        except Exception as exc:
            raise self._error(exc, op="HEAD", bucket=self.name, key=key) from exc
        metadata = {k.lower(): v for k, v in resp.get("Metadata", {}).items()}
        return ObjectInfo(
            key=key,
            size_bytes=int(resp.get("ContentLength", 0)),
            etag=str(resp.get("ETag", "")),
            sha256_hex=metadata.get(SHA256_METADATA_KEY),
            checksum_sha256=resp.get("ChecksumSHA256"),
            content_type=resp.get("ContentType"),
            content_encoding=resp.get("ContentEncoding"),
            last_modified=resp.get("LastModified"),
            metadata=metadata,
        )

    def _write_params(
        self, sha256_hex: str, content_type: str, content_encoding: str | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in self.object_parameters.items():
            params[name] = value
        params["ContentType"] = params.get("ContentType", content_type)
        if content_encoding and "ContentEncoding" not in params:
            params["ContentEncoding"] = content_encoding
        metadata = dict(params.pop("Metadata", {}) or {})
        metadata[SHA256_METADATA_KEY] = sha256_hex
        params["Metadata"] = metadata
        return params

    def put_object_checked(
        self,
        key: str,
        body: bytes,
        *,
        sha256_hex: str,
        content_type: str,
        content_encoding: str | None = None,
    ) -> PutResult:
        """Create-only PUT (If-None-Match: *) carrying ChecksumSHA256; the server checks both."""
        params = self._write_params(sha256_hex, content_type, content_encoding)
        try:
            resp = self.client.put_object(
                Bucket=self.name,
                Key=key,
                Body=body,
                IfNoneMatch="*",
                ChecksumSHA256=sha256_b64(sha256_hex),
                **params,
            )
        except Exception as exc:
            raise self._error(exc, op="PUT", bucket=self.name, key=key) from exc
        return PutResult(etag=str(resp.get("ETag", "")))

    def put_file_multipart(
        self,
        key: str,
        fh: IO[bytes],
        *,
        size_bytes: int,
        mtime_ns: int,
        part_size_bytes: int,
        content_type: str,
        content_encoding: str | None = None,
        part_workers: int = 1,
        send_part: PartSender | None = None,
    ) -> tuple[str, PutResult]:
        """Multipart upload of a regular file in equal parts: (its SHA-256 hex, the result).

        The file is read once to hash and once to send. The hashing pass computes every part's
        SHA-256 and the whole file's together: the whole digest goes in the metadata of
        CreateMultipartUpload, so it is needed before the first part. Then the parts are sent
        from the file at their offsets, ``part_workers`` at a time, each with its digest, which
        the server checks: the object is made of exactly the bytes that were hashed. They go
        through ``send_part`` (fastput: sendfile, no copy in Python) when given, else through
        botocore streaming a window of ``fh``. Memory: one 1 MiB buffer and a digest per part.

        A file that changes before anything is sent (a size or mtime other than
        ``size_bytes``/``mtime_ns`` before or after hashing, or a short read) raises
        ``SourceMoved``, which is retryable. Once the upload exists, a change fails with
        ``DigestMismatch`` code ``SourceChanged`` and the upload is aborted: a size or mtime
        that moved by the end, a part that ends early, a part the server refuses (BadDigest)
        whose bytes no longer hash the same.
        """
        fd = fh.fileno()
        _check_unchanged(key, fd, size_bytes, mtime_ns)
        lock = threading.Lock()
        windows: list[tuple[_PartWindow, str]] = []
        whole = hashlib.sha256()
        scratch = bytearray(_HASH_BLOCK_BYTES)
        offset = 0
        while offset < size_bytes or not windows:
            window = _PartWindow(fh, offset, min(part_size_bytes, size_bytes - offset), lock)
            part_hash = hashlib.sha256()
            got = window.hash(scratch, part_hash, whole)
            if got < len(window):
                raise SourceMoved(
                    f"{key}: the file ended at {offset + got:,} bytes while it was hashed, "
                    f"{size_bytes:,} expected",
                    code="source_changed",
                )
            windows.append((window, base64.b64encode(part_hash.digest()).decode("ascii")))
            offset += got
        _check_unchanged(key, fd, size_bytes, mtime_ns)
        sha256_hex = whole.hexdigest()
        upload_id = self._create_upload(key, sha256_hex, content_type, content_encoding)
        workers = min(part_workers, len(windows))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="r2m-part") if workers > 1 else None
        with self._aborted_on_failure(key, upload_id, pool):
            jobs = [
                (key, upload_id, number, window, digest, size_bytes, send_part)
                for number, (window, digest) in enumerate(windows, start=1)
            ]
            if pool is not None:
                parts = [f.result() for f in [pool.submit(self._upload_part, *j) for j in jobs]]
            else:
                parts = [self._upload_part(*job) for job in jobs]
            _check_unchanged(key, fd, size_bytes, mtime_ns, started=True)
            etag = self._complete_upload(key, upload_id, parts)
        return sha256_hex, PutResult(etag=etag, part_size_bytes=part_size_bytes)

    def put_multipart_checked(
        self,
        key: str,
        stream: IO[bytes],
        *,
        size_bytes: int,
        part_size_bytes: int,
        sha256_hex: str,
        content_type: str,
        content_encoding: str | None = None,
        part_workers: int = 1,
    ) -> PutResult:
        """Multipart upload of a stream whose SHA-256 is already known (an HTTP body, sent again).

        For a file on disk, ``put_file_multipart`` reads it one time fewer. Each part is read
        twice from the (seekable) stream: once to hash it, because its SHA-256 travels in a
        header before its bytes, then by botocore, which streams it from a window of the stream
        (``_PartWindow``). The server checks every part against its digest, so a stream that
        changes in between gets ``BadDigest``, never a wrong object. With ``part_workers`` > 1
        and a regular file, that many parts are sent at once (the hashing stays in order in
        this thread); other streams go one part at a time. The whole-file digest is recomputed
        while the parts are hashed: if it differs from `sha256_hex` (the source changed since
        it was hashed) the upload is aborted, never completed.
        """
        upload_id = self._create_upload(key, sha256_hex, content_type, content_encoding)
        whole = hashlib.sha256()
        scratch = bytearray(_HASH_BLOCK_BYTES)
        lock = threading.Lock()
        pool = (
            ThreadPoolExecutor(part_workers, thread_name_prefix="r2m-part")
            if part_workers > 1 and size_bytes > part_size_bytes and _is_regular_file(stream)
            else None
        )
        sending: list[Future[dict[str, Any]]] = []
        parts: list[dict[str, Any]] = []
        sent = 0
        with self._aborted_on_failure(key, upload_id, pool):
            number = 0
            while True:
                part = _PartWindow(stream, sent, min(part_size_bytes, size_bytes - sent), lock)
                part_hash = hashlib.sha256()
                got = part.hash(scratch, part_hash, whole)
                if got < len(part):
                    raise _source_changed(key, sent + got, size_bytes)
                number += 1
                digest = base64.b64encode(part_hash.digest()).decode("ascii")
                args = (key, upload_id, number, part, digest, size_bytes)
                if pool is not None:
                    sending.append(pool.submit(self._upload_part, *args))
                else:
                    parts.append(self._upload_part(*args))
                sent += got
                if sent >= size_bytes:
                    break
            parts.extend(f.result() for f in sending)  # in part order; the first error raises
            stream.seek(size_bytes)
            if stream.read(1):  # the file grew after it was hashed
                raise _source_changed(key, sent + 1, size_bytes)
            if whole.hexdigest() != sha256_hex:
                raise _source_changed(key, sent, size_bytes)
            etag = self._complete_upload(key, upload_id, parts)
        return PutResult(etag=etag, part_size_bytes=part_size_bytes)

    @contextlib.contextmanager
    def _aborted_on_failure(
        self, key: str, upload_id: str, pool: ThreadPoolExecutor | None
    ) -> Iterator[None]:
        """Abort the upload when the block fails, once every part in flight has ended (none may
        land after the abort); shut the part pool down either way."""
        try:
            yield
        except BaseException:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._abort(key, upload_id)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _create_upload(
        self, key: str, sha256_hex: str, content_type: str, content_encoding: str | None
    ) -> str:
        params = self._write_params(sha256_hex, content_type, content_encoding)
        try:
            created = self.client.create_multipart_upload(
                Bucket=self.name, Key=key, ChecksumAlgorithm="SHA256", **params
            )
        except Exception as exc:
            raise self._error(exc, op="CREATE-MULTIPART", bucket=self.name, key=key) from exc
        return str(created["UploadId"])

    def _complete_upload(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> str:
        try:
            resp = self.client.complete_multipart_upload(
                Bucket=self.name,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfNoneMatch="*",
            )
        except Exception as exc:
            raise self._error(exc, op="COMPLETE-MULTIPART", bucket=self.name, key=key) from exc
        return str(resp.get("ETag", ""))

    def _upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        part: _PartWindow,
        digest: str,
        size_bytes: int,
        send_part: PartSender | None = None,
    ) -> dict[str, Any]:
        part.seek(0)
        try:
            if send_part is not None:
                etag = send_part(key, upload_id, number, part.region(), digest)
            else:
                resp = self.client.upload_part(
                    Bucket=self.name,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,  # type: ignore[arg-type]
                    ChecksumSHA256=digest,
                )
                etag = resp["ETag"]
        except SourceShort as exc:
            raise _source_changed(key, part.offset, size_bytes) from exc
        except SourceUnreadable as exc:
            raise BucketError(
                f"{key}: reading part {number} from the file failed: {exc}",
                code="source_unreadable",
            ) from exc
        except Exception as exc:
            if part.shrank:
                raise _source_changed(key, part.offset + part.tell(), size_bytes) from exc
            error = (
                exc
                if isinstance(exc, BucketError)
                else self._error(exc, op="UPLOAD-PART", bucket=self.name, key=key)
            )
            if error.code in DIGEST_CODES and not part.still_hashes_to(digest):
                # The server saw other bytes than were hashed: the file changed in between.
                raise _source_changed(key, part.offset, size_bytes) from exc
            if error is exc:
                raise
            raise error from exc
        return {"PartNumber": number, "ETag": etag, "ChecksumSHA256": digest}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except Exception as exc:  # the server aborts leftovers itself after 7 days (R2)
            log.warning("could not abort multipart upload of %s: %s", key, exc)

    def get_sha256(self, key: str, *, chunk_bytes: int = 1 << 20) -> tuple[str, int]:
        """Stream the object back and hash it: (hex digest, size)."""
        try:
            resp = self.client.get_object(Bucket=self.name, Key=key)
            digest = hashlib.sha256()
            size = 0
            with contextlib.closing(resp["Body"]) as body:  # closed on failure too
                for chunk in body.iter_chunks(chunk_bytes):
                    digest.update(chunk)
                    size += len(chunk)
        except Exception as exc:
            raise self._error(exc, op="GET", bucket=self.name, key=key) from exc
        return digest.hexdigest(), size

    def delete_if_match(self, key: str, etag: str) -> None:
        """Delete only if the object still has `etag` (If-Match); ObjectChanged otherwise.

        Callers prove the object is ours (HEAD: our SHA-256) before calling; the condition closes
        the window in which it could have been replaced between that HEAD and this DELETE.
        """
        try:
            self.client.delete_object(Bucket=self.name, Key=key, IfMatch=etag)
        except Exception as exc:
            raise self._error(exc, op="DELETE", bucket=self.name, key=key) from exc
