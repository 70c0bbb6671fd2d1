"""The lean PUT path: its own SigV4 signer and one keep-alive socket per thread.

It does two things only: a single create-only PUT (``If-None-Match: *``) of a small object
already in memory, and UploadPart of a multipart upload that ``bucket.py`` created, sending the
part straight from the file with ``sendfile`` (a read-and-write loop under TLS). Create, complete,
abort, HEAD, delete and list stay with ``bucket.py`` (boto3). It raises the same error classes as
``bucket.translate_error`` with the same ``retryable`` meaning, and tests prove its signatures
equal botocore's, so ``transfer`` can switch between the two with one setting.

Why it exists: boto3 spends about 3 ms of client CPU per small PUT (request model, hooks, a
second signer pass, ``Expect: 100-continue``); this path spends a fraction of that. For parts,
botocore copies every byte through Python in 16 KiB writes; sendfile leaves them in the kernel.
The PUT is exactly what ``Bucket.put_object_checked`` sends, minus ``Expect``/``User-Agent``
noise and with ``x-amz-content-sha256: UNSIGNED-PAYLOAD`` (also over plain http, where botocore
would hash the body again): the precomputed ``x-amz-checksum-sha256`` already makes the server
check every byte.

Stale keep-alive connections: before a reused connection is written to it is polled; a readable
socket (the server's FIN or stray bytes) is closed and a new one opened. If the send or the wait
for the first response byte still fails on a *reused* connection (the server closed it in the
same instant), the request is sent once more on a fresh connection. That resend can only be
answered 412 if the first copy did land, and a 412 is ``ObjectExists``, which ``transfer``
already resolves by HEAD (the object is ours when it carries this SHA-256); a part sent twice
replaces itself with the same bytes. A failure on a fresh connection, a timeout, or any failure
after a response byte arrived is never resent here.
"""

from __future__ import annotations

import contextlib
import errno
import html
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from r2migrate.errors import (
    AccessDenied,
    BucketError,
    CertificateRefused,
    ConfigError,
    DigestMismatch,
    NoSuchBucket,
    ObjectExists,
    TransientBucketError,
)
from r2migrate.s3.bucket import (
    DENIED_CODES,
    DIGEST_CODES,
    SHA256_METADATA_KEY,
    TRANSIENT_CODES,
    FileRegion,
    PutResult,
    SourceShort,
    SourceUnreadable,
    sha256_b64,
    tls_verify,
)
from r2migrate.s3.client import ssl_context_for
from r2migrate.s3.sigv4 import UNSIGNED_PAYLOAD, SigV4Signer, canonical_uri

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = [
    "UNSIGNED_PAYLOAD",
    "FastPut",
    "SigV4Signer",
    "canonical_uri",
    "translate_response",
]

_USER_AGENT = "r2migrate-fastput"
_CONCAT_LIMIT_BYTES = 1 << 20  # above this the body goes in a second write instead of a copy
_RECV_BYTES = 65536
_TLS_SEND_BYTES = 256 * 1024  # a part under TLS: read and encrypt this much at a time
# sendfile(2) cannot read this file: copy it in user space instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
_MAX_HEAD_BYTES = 64 * 1024

# put_object parameters that are plain header strings: boto3 sends them unchanged.
_HEADER_PARAMETERS: Mapping[str, str] = {
    "CacheControl": "cache-control",
    "ContentDisposition": "content-disposition",
    "ContentEncoding": "content-encoding",
    "ContentLanguage": "content-language",
    "ContentType": "content-type",
    "StorageClass": "x-amz-storage-class",
    "ACL": "x-amz-acl",
    "GrantFullControl": "x-amz-grant-full-control",
    "GrantRead": "x-amz-grant-read",
    "GrantReadACP": "x-amz-grant-read-acp",
    "GrantWriteACP": "x-amz-grant-write-acp",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "SSEKMSEncryptionContext": "x-amz-server-side-encryption-context",
    "Tagging": "x-amz-tagging",
    "WebsiteRedirectLocation": "x-amz-website-redirect-location",
}
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: nothing to encode, no CR/LF
_XML_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


# -- responses and errors -----------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def error_code(self) -> str:
        match = _XML_CODE.search(self.body)
        return html.unescape(match.group(1).decode("utf-8", "replace")).strip() if match else ""

    @property
    def error_message(self) -> str:
        match = _XML_MESSAGE.search(self.body)
        return html.unescape(match.group(1).decode("utf-8", "replace")).strip() if match else ""


def translate_response(
    response: Response, *, bucket: str, key: str, op: str = "PUT"
) -> BucketError:
    """Map an S3 error answer to a PUT onto the tree, as ``bucket.translate_error`` does."""
    where = f"{op} s3://{bucket}/{key}"
    status = response.status
    code = response.error_code or str(status)  # botocore's code for an answer without XML
    message = response.error_message or code or str(status)
    if code in ("PreconditionFailed", "412") or status == 412:
        return ObjectExists(f"{where}: the key already holds an object", code="PreconditionFailed")
    if code in DIGEST_CODES:  # bucket.translate_error's sets: both paths classify alike
        return DigestMismatch(f"{where}: the server rejected the SHA-256 ({code})", code=code)
    if code == "NoSuchBucket":
        return NoSuchBucket(f"Bucket {bucket!r} does not exist", code="NoSuchBucket")
    if code in DENIED_CODES or status == 403:
        return AccessDenied(f"{where}: access denied ({code or status})", code=code or "403")
    if code in TRANSIENT_CODES or status == 429 or status >= 500:
        return TransientBucketError(f"{where}: {code or status}: {message}", code=code)
    return BucketError(f"{where}: {code or status}: {message}", code=code)


def _network_error(exc: BaseException, *, bucket: str, key: str, op: str = "PUT") -> BucketError:
    where = f"{op} s3://{bucket}/{key}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # botocore raises SSLError here, which translate_error leaves non-retryable too.
        return CertificateRefused(f"{where}: SSLError: {exc}", code="SSLError")
    return TransientBucketError(f"{where}: {type(exc).__name__}: {exc}", code="network")


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as we read it; the connection is unusable."""


class _NoResponse(ConnectionError):
    """The connection failed before a single response byte arrived."""


# -- one connection -----------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection, used by one thread at a time."""

    def __init__(self, sock: socket.socket, *, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        self.pid = os.getpid()  # a forked worker must not write into its parent's socket
        self.owner = threading.current_thread()  # its connection is closed once it has ended
        self.requests = 0
        self._buf = bytearray()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def looks_stale(self) -> bool:
        """True when an idle connection is readable: the peer closed it or sent stray bytes."""
        if self._buf:
            return True
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(0):
                return False
        except (OSError, ValueError):  # closed under us (fileno -1)
            return True
        if not isinstance(self.sock, ssl.SSLSocket):
            return True  # EOF or bytes nobody asked for: either way not reusable
        # Under TLS, readable may be a late post-handshake message (a session ticket), which
        # the TLS layer consumes without yielding data: only EOF or real data mean stale.
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout_s)
        return True

    def send(self, head: bytes, body: bytes | FileRegion) -> None:
        if isinstance(body, FileRegion):
            self.sock.sendall(head)
            self._send_region(body)
        elif len(body) <= _CONCAT_LIMIT_BYTES:
            self.sock.sendall(head + body)  # one write: one segment train, no Nagle stall
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)

    def _send_region(self, region: FileRegion) -> None:
        """The region's bytes: sendfile on plain TCP; under TLS, or from a file sendfile cannot
        read (EINVAL on some /proc or FUSE files), read and sendall in user space.

        Raises ``SourceShort`` when the file ends first and ``SourceUnreadable`` when reading
        it fails; either way the request is cut off and the caller must drop this connection.
        """
        if isinstance(self.sock, ssl.SSLSocket):
            self._copy_region(region.offset, region.size, region.fd)
            return
        offset, left = region.offset, region.size
        out = self.sock.fileno()
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        while left:
            try:
                sent = os.sendfile(out, region.fd, offset, left)
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                if not poller.poll(self.timeout_s * 1000):
                    raise TimeoutError("timed out sending a part") from None
                continue
            except OSError as exc:
                if exc.errno in _NO_SENDFILE and offset == region.offset:
                    self._copy_region(offset, left, region.fd)
                    return
                raise
            if not sent:
                raise SourceShort(f"the source ended {left} bytes early")
            offset += sent
            left -= sent

    def _copy_region(self, offset: int, left: int, fd: int) -> None:
        while left:
            try:
                chunk = os.pread(fd, min(left, _TLS_SEND_BYTES), offset)
            except OSError as exc:
                raise SourceUnreadable(exc.errno, f"reading the file: {exc.strerror}") from exc
            if not chunk:
                raise SourceShort(f"the source ended {left} bytes early")
            self.sock.sendall(chunk)
            offset += len(chunk)
            left -= len(chunk)

    def _fill(self) -> bool:
        chunk = self.sock.recv(_RECV_BYTES)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read_response(self) -> tuple[Response, bool]:
        """(response, keep_alive); raises _NoResponse when nothing at all came back."""
        first = True
        while True:
            end = self._buf.find(b"\r\n\r\n")
            while end < 0:
                if len(self._buf) > _MAX_HEAD_BYTES:
                    raise _ProtocolError("response header block too large")
                try:
                    got = self._fill()
                except (ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError) as exc:
                    if first and not self._buf:
                        raise _NoResponse(str(exc) or type(exc).__name__) from exc
                    raise
                if not got:
                    if first and not self._buf:
                        raise _NoResponse("connection closed before any response byte")
                    raise _ProtocolError("connection closed inside the response header")
                end = self._buf.find(b"\r\n\r\n")
            first = False
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            status_line, *lines = head.split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise _ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
            try:
                status = int(parts[1])
            except ValueError as exc:
                raise _ProtocolError(f"bad status {parts[1][:20]!r}") from exc
            headers: dict[str, str] = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # 100 Continue (not asked for, but allowed) precedes the real answer
            keep_alive = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = self._read_chunked()
            elif "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError as exc:
                    raise _ProtocolError("bad Content-Length") from exc
                body = self._read_exact(length)
            elif status in (204, 304):
                body = b""
            else:  # delimited by close
                while self._fill():
                    pass
                body = bytes(self._buf)
                self._buf.clear()
                keep_alive = False
            return Response(status, headers, body), keep_alive

    def _read_exact(self, length: int) -> bytes:
        while len(self._buf) < length:
            if not self._fill():
                raise _ProtocolError("connection closed inside the response body")
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    def _read_line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > _MAX_HEAD_BYTES or not self._fill():
                raise _ProtocolError("bad chunked encoding")

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise _ProtocolError("bad chunk size") from exc
            if size == 0:
                while self._read_line():  # trailers end with an empty line
                    pass
                return bytes(out)
            out += self._read_exact(size)
            if self._read_line():
                raise _ProtocolError("chunk not followed by CRLF")


# -- the PUT path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedPut:
    """One request ready for the wire (tests compare it with what boto3 would send)."""

    target: str  # request target: canonical URI, percent-encoded
    headers: tuple[tuple[str, str], ...]  # as sent, lower-case names
    canonical_request: str
    head: bytes  # request line and header block, CRLF-terminated


class FastPut:
    """Create-only PUTs of small objects over one keep-alive connection per calling thread.

    One instance may be shared by any number of threads: each thread lazily gets its own
    connection (a thread-local), so calls never contend. ``close()`` closes all of them.
    Raises ``ConfigError`` at construction for settings this path cannot honour exactly (then
    use ``Bucket.put_object_checked``); per call it raises only ``BucketError`` subclasses.
    """

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        problems: list[str] = []
        if not settings.bucket_name:
            problems.append("bucket_name is not set")
        endpoint = settings.effective_endpoint_url
        if not endpoint:
            problems.append("fast_put needs endpoint_url or r2_account_id (no AWS default)")
        if not settings.access_key or not settings.secret_key:
            problems.append("fast_put needs access_key and secret_key in the settings")
        self.bucket_name = settings.bucket_name or ""
        self._static_headers = _object_parameter_headers(settings.object_parameters, problems)
        parts = urlsplit(endpoint or "http://invalid")
        if parts.path not in ("", "/") or parts.query:
            problems.append("fast_put supports an endpoint_url without a path")
        if settings.addressing_style == "virtual" and "." in self.bucket_name:
            problems.append("virtual addressing needs a bucket name without dots")
        if problems:
            raise ConfigError(
                [f"fast_put: {p}" for p in problems],
                hint="Turn fast_put off to send these objects through boto3.",
            )
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        endpoint_host = parts.hostname or ""
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        netloc_host = f"[{endpoint_host}]" if ":" in endpoint_host else endpoint_host
        if settings.addressing_style == "virtual":
            self.connect_host = f"{self.bucket_name}.{endpoint_host}"
            host = f"{self.bucket_name}.{netloc_host}"
            self._prefix = "/"
        else:
            self.connect_host = endpoint_host
            host = netloc_host
            self._prefix = f"/{self.bucket_name}/"
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.connect_timeout_s = settings.connect_timeout_s
        self.read_timeout_s = settings.read_timeout_s
        self.signer = SigV4Signer(
            access_key=settings.access_key or "",
            secret_key=settings.secret_key or "",
            region=settings.effective_region_name or "us-east-1",
            session_token=settings.session_token,
        )
        self._ssl_context: ssl.SSLContext | None = None
        if self.tls:
            self._ssl_context = ssl_context or ssl_context_for(tls_verify(settings))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self.connections_opened = 0  # for tests and benchmarks

    # -- public ---------------------------------------------------------------------------------

    def put_object_checked(
        self,
        key: str,
        body: bytes,
        *,
        sha256_hex: str,
        content_type: str,
        content_encoding: str | None = None,
    ) -> PutResult:
        """Create-only PUT carrying ``x-amz-checksum-sha256``; same contract as Bucket's."""
        prepared = self.prepare(
            key,
            len(body),
            sha256_hex=sha256_hex,
            content_type=content_type,
            content_encoding=content_encoding,
        )
        response = self._exchange(prepared.head, body, key)
        if response.status >= 300:
            raise translate_response(response, bucket=self.bucket_name, key=key)
        return PutResult(etag=response.headers.get("etag", ""))

    def prepare(
        self,
        key: str,
        size_bytes: int,
        *,
        sha256_hex: str,
        content_type: str,
        content_encoding: str | None = None,
        amz_date: str | None = None,
    ) -> PreparedPut:
        """The signed request for one PUT (``amz_date`` fixed only by tests)."""
        if not key:
            raise BucketError("PUT: empty object key", code="InvalidKey")
        headers = [("host", self.host_header)]
        # Same precedence as Bucket._write_params: object_parameters win over the per-file values.
        if "content-type" not in self._static_headers:
            headers.append(("content-type", content_type))
        if content_encoding and "content-encoding" not in self._static_headers:
            headers.append(("content-encoding", content_encoding))
        headers.extend(self._static_headers.items())
        headers.append(("if-none-match", "*"))
        headers.append(("x-amz-checksum-sha256", sha256_b64(sha256_hex)))
        headers.append((f"x-amz-meta-{SHA256_METADATA_KEY}", sha256_hex))
        for value in (content_type, content_encoding or "", sha256_hex):
            if not _HEADER_VALUE.fullmatch(value):
                raise BucketError(
                    f"PUT s3://{self.bucket_name}/{key}: {value!r} holds characters fast_put "
                    "does not send in a header; turn fast_put off for this file",
                    code="FastPutUnsupported",
                )
        return self._signed_put(key, "", headers, size_bytes, amz_date)

    def upload_part(
        self, key: str, upload_id: str, number: int, region: FileRegion, checksum_b64: str
    ) -> str:
        """UploadPart of ``region`` (sent from the file) with its SHA-256; returns the ETag.

        Same signature as ``bucket.PartSender``. Raises ``SourceShort`` when the file ends
        before the region does, ``SourceUnreadable`` when reading it fails, else only
        ``BucketError`` subclasses.
        """
        prepared = self.prepare_part(key, upload_id, number, region.size, checksum_b64)
        response = self._exchange(prepared.head, region, key, op="UPLOAD-PART")
        if response.status >= 300:
            raise translate_response(response, bucket=self.bucket_name, key=key, op="UPLOAD-PART")
        return response.headers.get("etag", "")

    def prepare_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        size_bytes: int,
        checksum_b64: str,
        *,
        amz_date: str | None = None,
    ) -> PreparedPut:
        """The signed UploadPart request (``amz_date`` fixed only by tests)."""
        if not key:
            raise BucketError("UPLOAD-PART: empty object key", code="InvalidKey")
        if not _HEADER_VALUE.fullmatch(checksum_b64):
            raise BucketError(f"UPLOAD-PART {key}: bad checksum {checksum_b64!r}", code="Invalid")
        # The canonical query: names sorted (partNumber < uploadId), values percent-encoded.
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        headers = [("host", self.host_header), ("x-amz-checksum-sha256", checksum_b64)]
        return self._signed_put(key, query, headers, size_bytes, amz_date)

    def _signed_put(
        self,
        key: str,
        query: str,
        headers: list[tuple[str, str]],
        size_bytes: int,
        amz_date: str | None,
    ) -> PreparedPut:
        path = canonical_uri(self._prefix + key)
        target = f"{path}?{query}" if query else path
        date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed, canonical = self.signer.sign("PUT", path, headers, amz_date=date, query=query)
        lines = [f"PUT {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in signed)
        lines.append(f"content-length: {size_bytes}")
        lines.append(f"user-agent: {_USER_AGENT}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        return PreparedPut(target, tuple(signed), canonical, head)

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            conn.close()

    def __enter__(self) -> FastPut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _exchange(
        self, head: bytes, body: bytes | FileRegion, key: str, op: str = "PUT"
    ) -> Response:
        for _ in range(2):
            conn = self._connection(key, op)
            reused = conn.requests > 0
            conn.requests += 1
            try:
                response, keep_alive = self._send_and_read(conn, head, body)
            except (SourceShort, SourceUnreadable):
                self._discard(conn)  # the request was cut off mid-body
                raise
            except _NoResponse as exc:
                self._discard(conn)
                if reused:
                    continue  # the server closed the idle connection as we wrote: once more
                raise _network_error(exc, bucket=self.bucket_name, key=key, op=op) from exc
            except (OSError, _ProtocolError) as exc:
                self._discard(conn)
                raise _network_error(exc, bucket=self.bucket_name, key=key, op=op) from exc
            if not keep_alive:
                self._discard(conn)
            return response
        raise AssertionError("unreachable: a fresh connection never loops")  # pragma: no cover

    @staticmethod
    def _send_and_read(
        conn: _Connection, head: bytes, body: bytes | FileRegion
    ) -> tuple[Response, bool]:
        try:
            conn.send(head, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            # The server may have answered early (403, 412) and closed before taking the body:
            # that answer can still be waiting in the receive buffer.
            try:
                response, _ = conn.read_response()
            except (OSError, _ProtocolError):
                raise _NoResponse(str(exc) or type(exc).__name__) from exc
            return response, False
        return conn.read_response()

    def _connection(self, key: str, op: str) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid != os.getpid():
            self._local.conn = conn = None  # inherited through fork: the parent's to close
        if conn is not None and conn.looks_stale():
            self._discard(conn)
            conn = None
        if conn is None:
            try:
                conn = self._open_connection()
            except OSError as exc:
                raise _network_error(exc, bucket=self.bucket_name, key=key, op=op) from exc
            self._local.conn = conn
        return conn

    def _open_connection(self) -> _Connection:
        sock = socket.create_connection(
            (self.connect_host, self.port), timeout=self.connect_timeout_s
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self.connect_host)
            sock.settimeout(self.read_timeout_s)
        except BaseException:
            sock.close()
            raise
        conn = _Connection(sock, timeout_s=self.read_timeout_s)
        with self._lock:
            # Part threads live as long as one file's upload: close what ended threads left.
            ended = [c for c in self._open if not c.owner.is_alive()]
            self._open.difference_update(ended)
            self._open.add(conn)
            self.connections_opened += 1
        for old in ended:
            old.close()
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None


def _object_parameter_headers(params: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """object_parameters → header (lower-case name → value); unknown ones become problems."""
    headers: dict[str, str] = {}
    for name, value in params.items():
        header = _HEADER_PARAMETERS.get(name)
        if name == "Expires":
            header, value = "expires", _http_date(value, problems)
        elif name == "Metadata" or header is None:
            problems.append(
                f"object_parameters {name!r} is not supported by the lean PUT path "
                f"(supported: Expires, {', '.join(sorted(_HEADER_PARAMETERS))})"
            )
            continue
        if not _HEADER_VALUE.fullmatch(value):
            problems.append(f"object_parameters {name!r} holds characters other than ASCII")
            continue
        headers[header] = value
    return headers


def _http_date(value: str, problems: list[str]) -> str:
    """An Expires value as botocore sends it: RFC 7231 date in GMT."""
    when: datetime | None = None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = parsedate_to_datetime(value)
    if when is None:
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when is None:
        problems.append(f"object_parameters 'Expires' is not a date: {value!r}")
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when.astimezone(UTC), usegmt=True)
