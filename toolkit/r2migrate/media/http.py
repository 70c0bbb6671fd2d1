"""The read-only HTTP side: fetch media files from the running application's ``MEDIA_URL``.

Must never send anything but GET and HEAD, never write a file, and never touch the database or
the bucket. It is ``source.py``'s counterpart for a migrator that cannot see the disk (a worker in
another container): ``source = "http"`` reads ``media_url`` + the percent-encoded name.

A name is checked with the disk side's text rules (empty, NUL, absolute, ``..``) before any request
is made, so an unsafe row never reaches the server. The answers become the toolkit's errors:

    200                      the bytes (counted against Content-Length; a short body is an error)
    404, 410                 SourceError(MISSING): a problem row, never an upload
    401, 403                 SourceRefused (exit 2): the credentials, not the file, are wrong
    3xx                      SourceError(UNREADABLE): redirects are not followed, so the auth
                             header never travels to another host
    408, 429, 5xx, refused,  SourceUnavailable (exit 3, retryable)
    reset, timeout
    anything else            SourceError(UNREADABLE)

The auth header (``media_auth_header``) is sent with every request and never appears in a
message; a URL never holds credentials (``config`` refuses a ``media_url`` with a user or
password).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlsplit

from r2migrate.errors import Problem, SourceError, SourceRefused, SourceUnavailable
from r2migrate.media.names import check_name  # the same text rules as the disk side

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = ["MediaServer", "RemoteBody", "RemoteStat", "SeekWindow", "media_url_for"]

T = TypeVar("T")

USER_AGENT = "r2migrate (read-only media copy)"
# What Django's filepath_to_uri leaves unescaped besides letters, digits and "_.-".
_SAFE = "/~!*()'"
_IDLE_CONNECTIONS = 64  # kept open for reuse; more threads than this just open new ones
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A keep-alive connection the server closed while idle fails on first use: retried once, fresh.
_STALE_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

_HINT_MISSING = "The application does not serve this file; check the row's name and media_url."
_HINT_REDIRECT = (
    "Point media_url at the address that serves the files itself (redirects are not followed, "
    "so the auth header never reaches another host)."
)
_HINT_UNREADABLE = "Check that the application serves MEDIA_URL to this machine."


@dataclass(frozen=True)
class RemoteStat:
    """What the media server said about one file (HEAD, or a counted GET without a length)."""

    url: str
    size_bytes: int
    mtime_ns: int | None  # from Last-Modified (whole seconds), None when not sent


def media_url_for(media_url: str, name: str | None) -> str:
    """``media_url`` + ``name`` percent-encoded (UTF-8) as Django's ``FileSystemStorage.url()``.

    Unlike Django, a backslash is sent as ``%5C`` rather than turned into ``/``: on a POSIX
    MEDIA_ROOT it is part of the file's name. Raises ``UnsafePath`` for a name the disk side would
    refuse as text (empty, NUL, absolute, a ``..`` segment) and ``SourceError`` for a name ending
    in ``/``, before anything is sent.
    """
    text = check_name(name)
    if text.endswith("/"):
        raise SourceError(
            f"{text!r} ends in '/', so it names a directory",
            problem=Problem.NOT_REGULAR_FILE,
            hint="Only files can be migrated; fix the row.",
        )
    base = media_url if media_url.endswith("/") else media_url + "/"
    return base + quote(os.fsencode(text), safe=_SAFE)


class MediaServer:
    """GET and HEAD against ``media_url``; thread-safe, with a small pool of keep-alive sockets.

    ``stat`` and ``sha256`` retry transient failures (``max_attempts`` tries, exponential backoff
    from ``backoff_base_s``); ``open`` does not, because its caller retries the whole upload.
    """

    def __init__(
        self,
        media_url: str,
        *,
        auth_header: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        verify_tls: bool = True,
        max_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        parts = urlsplit(media_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("media_url must be an absolute http(s) URL")
        self.media_url = media_url if media_url.endswith("/") else media_url + "/"
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        self._has_auth = bool(auth_header)
        if auth_header:
            header, _, value = auth_header.partition(":")
            self._headers[header.strip()] = value.strip()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max(1, max_attempts)
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context()
            if not verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._open: set[http.client.HTTPConnection] = set()
        self._closed = False
        self._rng = random.Random()

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaServer:
        """The server ``settings.media_url`` names, with its auth header, timeouts and retries."""
        if settings.media_url is None:
            raise ValueError("media_url is not set")
        return cls(
            settings.media_url,
            auth_header=settings.media_auth_header,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            verify_tls=settings.verify,
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
        )

    # -- the three reads -----------------------------------------------------------------------

    def url_for(self, name: str | None) -> str:
        """The URL of one file; raises ``UnsafePath``/``SourceError`` as ``media_url_for``."""
        return media_url_for(self.media_url, name)

    def stat(self, name: str | None) -> RemoteStat:
        """Size (Content-Length of a HEAD) and Last-Modified of one file.

        A server that refuses HEAD (405, 501) or answers it without a length is asked with a GET
        whose body is counted and dropped.
        """
        url = self.url_for(name)
        return self._retrying(lambda: self._stat_once(name, url))

    def open(self, name: str | None) -> RemoteBody:
        """GET one file; the caller reads the body and closes it (``with server.open(n) as b``)."""
        url = self.url_for(name)
        return self._open_url(name, url)

    def sha256(self, name: str | None, *, chunk_bytes: int = 1 << 20) -> tuple[str, int]:
        """GET one file and hash it: (hex SHA-256, bytes received); memory stays at one chunk."""
        url = self.url_for(name)

        def once() -> tuple[str, int]:
            digest = hashlib.sha256()
            with self._open_url(name, url) as body:
                while chunk := body.read(chunk_bytes):
                    digest.update(chunk)
                return digest.hexdigest(), body.bytes_read

        return self._retrying(once)

    def close(self) -> None:
        """Close every pooled connection; bodies still open close theirs when they are closed."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def __enter__(self) -> MediaServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------

    def _stat_once(self, name: str | None, url: str) -> RemoteStat:
        conn, resp = self._request("HEAD", url)
        try:
            resp.read()
            no_head = resp.status in (405, 501)
            if not no_head:
                self._check_status(resp, url, name)
        except BaseException:
            resp.close()
            self._discard(conn)
            raise
        length = None if no_head else _content_length(resp)
        mtime_ns = _last_modified_ns(resp)
        self._release(conn, resp)
        if length is None:
            return self._stat_by_get(name, url)
        return RemoteStat(url=url, size_bytes=length, mtime_ns=mtime_ns)

    def _stat_by_get(self, name: str | None, url: str) -> RemoteStat:
        with self._open_url(name, url) as body:
            while body.read(1 << 20):
                pass
            return RemoteStat(url=url, size_bytes=body.bytes_read, mtime_ns=body.mtime_ns)

    def _open_url(self, name: str | None, url: str) -> RemoteBody:
        conn, resp = self._request("GET", url)
        try:
            self._check_status(resp, url, name)
        except BaseException:
            resp.close()  # the response holds its own reference to the socket
            self._discard(conn)
            raise
        return RemoteBody(self, conn, resp, url=url, name=name)

    def _request(
        self, method: str, url: str
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        path = url[len(self._origin) :] or "/"
        for attempt in (1, 2):
            conn, reused = self._acquire()
            try:
                if conn.sock is None:
                    conn.connect()
                    if conn.sock is not None:
                        conn.sock.settimeout(self._read_timeout_s)
                conn.request(method, path, headers=self._headers)
                return conn, conn.getresponse()
            except _STALE_ERRORS as exc:
                self._discard(conn)
                if reused and attempt == 1:
                    continue
                raise self._unavailable(url, exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._discard(conn)
                raise self._unavailable(url, exc) from exc
            except BaseException:
                self._discard(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_status(self, resp: http.client.HTTPResponse, url: str, name: str | None) -> None:
        status = resp.status
        if status == 200:
            return
        what = f"HTTP {status} {resp.reason}".strip()
        if status in (404, 410):
            raise SourceError(
                f"{name!r}: the media server answered {what} ({url})",
                problem=Problem.MISSING,
                hint=_HINT_MISSING,
            )
        if status in (401, 403):
            sent = "the media_auth_header sent was refused" if self._has_auth else "no auth sent"
            raise SourceRefused(
                f"the media server answered {what} for {url} ({sent})", problem=Problem.UNREADABLE
            )
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise SourceUnavailable(f"the media server answered {what} for {url}")
        if 300 <= status < 400:
            target = urlsplit(resp.getheader("Location") or "")._replace(query="", fragment="")
            raise SourceError(
                f"{name!r}: the media server redirects {url} to {target.geturl() or '?'} "
                f"({what}); redirects are not followed",
                problem=Problem.UNREADABLE,
                hint=_HINT_REDIRECT,
            )
        raise SourceError(
            f"{name!r}: the media server answered {what} ({url})",
            problem=Problem.UNREADABLE,
            hint=_HINT_UNREADABLE,
        )

    def _unavailable(self, url: str, exc: BaseException) -> SourceUnavailable:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return SourceUnavailable(f"cannot read {url} from the media server: {reason}")

    def _retrying(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except SourceUnavailable:
                if attempt >= self._max_attempts:
                    raise
            ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
            time.sleep(ceiling * self._rng.uniform(0.5, 1.0))

    # -- the connection pool --------------------------------------------------------------------

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise RuntimeError("MediaServer is closed")
            while self._idle:
                conn = self._idle.pop()
                if conn.sock is not None:
                    return conn, True
                self._open.discard(conn)
            conn = self._new_connection()
            self._open.add(conn)
            return conn, False

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout_s, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout_s)

    def _release(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Back to the pool when the response was read to its end, else closed."""
        resp.close()
        with self._lock:
            if not self._closed and resp.isclosed() and len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)


class RemoteBody:
    """One GET response being read: every byte counted, the count held to Content-Length.

    A body that ends before its Content-Length, or a connection that breaks, raises
    ``SourceUnavailable`` (retryable) from ``read``. ``read(n)`` returns exactly ``n`` bytes
    until the last piece, as a file does. ``close`` gives a fully read connection back for reuse.
    """

    def __init__(
        self,
        server: MediaServer,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        *,
        url: str,
        name: str | None,
    ) -> None:
        self._server = server
        self._conn = conn
        self._resp = resp
        self.url = url
        self.name = name
        self.content_length = _content_length(resp)
        self.mtime_ns = _last_modified_ns(resp)
        self.bytes_read = 0
        self._done = False
        self._closed = False

    def read(self, size: int = -1) -> bytes:
        if size == 0 or self._done:
            return b""
        pieces: list[bytes] = []
        wanted = size if size > 0 else None
        got = 0
        while wanted is None or got < wanted:
            step = (wanted - got) if wanted is not None else 1 << 20
            try:
                piece = self._resp.read(step)
            except (OSError, http.client.HTTPException) as exc:
                raise self._broken(exc) from exc
            if not piece:
                self._done = True
                break
            pieces.append(piece)
            got += len(piece)
            self.bytes_read += len(piece)
        if self._done and self.content_length is not None and self.bytes_read < self.content_length:
            raise self._short()
        return b"".join(pieces)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Up to ``len(buffer)`` bytes into ``buffer``; 0 only at the end of the body."""
        view = memoryview(buffer).cast("B")
        if not len(view) or self._done:
            return 0
        try:
            count = self._resp.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from exc
        if not count:
            self._done = True
            if self.content_length is not None and self.bytes_read < self.content_length:
                raise self._short()
            return 0
        self.bytes_read += count
        return count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._done and self._resp.isclosed():
            self._server._release(self._conn, self._resp)
        else:  # unread bytes would corrupt the next response on this connection
            self._resp.close()
            self._server._discard(self._conn)

    def __enter__(self) -> RemoteBody:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _short(self) -> SourceUnavailable:
        return SourceUnavailable(
            f"the media server sent {self.bytes_read} of {self.content_length} bytes "
            f"(Content-Length) for {self.url}"
        )

    def _broken(self, exc: BaseException) -> SourceUnavailable:
        if isinstance(exc, http.client.IncompleteRead):
            self.bytes_read += len(exc.partial)
            return self._short()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return SourceUnavailable(
            f"the connection broke after {self.bytes_read} bytes of {self.url}: {reason}"
        )


class SeekWindow:
    """A ``RemoteBody`` made seekable within a window of ``window_bytes`` held in memory.

    For the multipart upload, which reads every part twice (hash, then send) and may rewind a
    part to resend it: with windows the size of a part, each part is fetched once. Seeking
    forward past the window drops it and reads on; seeking back before it is impossible (the
    bytes are gone) and raises ``io.UnsupportedOperation``. Memory: one window.
    """

    def __init__(self, body: RemoteBody, window_bytes: int) -> None:
        self._body = body
        self._window_bytes = max(1, window_bytes)
        self._buffer = b""
        self._start = 0  # offset of _buffer[0] in the body
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("an HTTP body has no known end to seek from")
        if pos < self._start:
            raise io.UnsupportedOperation(
                f"cannot seek back to {pos}: the body is held from byte {self._start} on"
            )
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        view = self._window()
        if size is None or size < 0:
            size = len(view)
        data = bytes(view[:size])
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        target = memoryview(buffer).cast("B")
        view = self._window()
        count = min(len(target), len(view))
        target[:count] = view[:count]
        self._pos += count
        return count

    def close(self) -> None:
        self._body.close()

    def _window(self) -> memoryview:
        """The held bytes from the position on; refilled when the position left the window."""
        end = self._start + len(self._buffer)
        if self._pos >= end:
            skip = self._pos - end
            while skip > 0:  # a forward seek past the window: read and drop
                dropped = self._body.read(min(skip, 1 << 20))
                if not dropped:
                    break
                skip -= len(dropped)
            self._start = self._pos - skip
            self._buffer = self._body.read(self._window_bytes) if not skip else b""
        return memoryview(self._buffer)[self._pos - self._start :]


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    if resp.getheader("Transfer-Encoding"):
        return None  # chunked: a Content-Length beside it must be ignored (RFC 9112 6.3)
    values = resp.msg.get_all("Content-Length") or []
    lengths = {v.strip() for v in ",".join(values).split(",") if v.strip()}
    if len(lengths) != 1:
        return None
    (text,) = lengths
    return int(text) if text.isdigit() else None


def _last_modified_ns(resp: http.client.HTTPResponse) -> int | None:
    text = resp.getheader("Last-Modified")
    if not text:
        return None
    try:
        return int(parsedate_to_datetime(text).timestamp()) * 1_000_000_000
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
