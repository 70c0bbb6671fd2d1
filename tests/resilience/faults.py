"""ChaosProxy: tests/proxy.py's FaultProxy plus the faults that need the server's response.

Test helper, loopback only. Besides FaultProxy's "reset" (before the body), "503", "slowdown"
and ("delay", s), a rule may answer:

- "500"                   an InternalError answered by the proxy (never reaches the server)
- "reset_after_body"      the whole request is read, then the connection is reset; the server
                          never sees it
- "reset_after_forward"   the request reaches the server (a PUT lands), then the client's
                          connection is reset before any response byte: the outcome is unknown
                          to the client, which must find out by HEAD instead of sending again
- "truncate"              the server's response is cut in half (inside the header block or the
                          body) and the connection closed
- "stall"                 the request reaches the server, the response is held for ``stall_s``
                          (past the client's read timeout) and then dropped

Faults are bounded: ``max_faults`` in total, ``caps`` per kind (stalls cost a read timeout each),
and none after ``fault_window_s`` from the first request; past a bound every request is forwarded
unchanged, so a scenario always ends. Every exchange is recorded (``exchanges``) with whether it
reached the server and the server's status, so a test can count uploads that *landed* per key,
not only requests sent.

Requests are handled strictly one after another per connection (botocore and fastput never
pipeline), which is what lets the proxy read a whole response before deciding what to do with it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from tests.helpers.proxy import FaultProxy, Request

RESPONSE_FAULTS = frozenset({"reset_after_forward", "truncate", "stall"})
ANSWER_FAULTS = {
    "503": (503, "Service Unavailable", "ServiceUnavailable"),
    "slowdown": (503, "Slow Down", "SlowDown"),
    "500": (500, "Internal Server Error", "InternalError"),
}
ALL_FAULTS = (
    "503",
    "slowdown",
    "500",
    "reset",
    "reset_after_body",
    "reset_after_forward",
    "truncate",
    "stall",
)
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends RST
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Exchange:
    """One request as the proxy saw it, and what became of it."""

    seq: int
    at: float  # time.monotonic() when the request head arrived
    method: str
    path: str
    query: str
    body_bytes: int
    fault: str | None  # the fault injected, None when forwarded untouched
    forwarded: bool  # the server received the request
    status: int | None  # the server's status, when it answered

    @property
    def key(self) -> str:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else ""

    @property
    def is_upload_start(self) -> bool:
        """A request that sends (or starts sending) a whole object: PUT, or multipart create."""
        plain_put = self.method == "PUT" and not self.query and bool(self.key)
        return plain_put or (self.method == "POST" and "uploads" in self.query.split("&"))

    @property
    def is_upload_done(self) -> bool:
        """A request whose 2xx answer means an object now exists: PUT or multipart complete."""
        plain_put = self.method == "PUT" and not self.query and bool(self.key)
        complete = self.method == "POST" and "uploadId=" in self.query
        return (plain_put or complete) and self.status is not None and 200 <= self.status < 300


@dataclass
class ChaosProxy(FaultProxy):
    """A FaultProxy whose rules may also act on the server's response; see the module docstring."""

    max_faults: int | None = None
    caps: Mapping[str, int] = field(default_factory=dict)
    fault_window_s: float | None = None
    stall_s: float = 3.0
    exchanges: list[Exchange] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._started: float | None = None
        super().__post_init__()

    # -- queries ----------------------------------------------------------------------------------

    def mark(self) -> int:
        """The sequence number the next request will get: 'from now on' for ``since``."""
        with self._lock:
            return len(self.exchanges)

    def since(self, mark: int) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges[mark:])

    def landed(self) -> Counter[str]:
        """Objects created per key (a 2xx PUT or multipart completion that reached the server)."""
        with self._lock:
            return Counter(e.key for e in self.exchanges if e.is_upload_done)

    def upload_starts(self, mark: int = 0) -> Counter[str]:
        """Requests that started sending an object per key, from ``mark`` on."""
        return Counter(e.key for e in self.since(mark) if e.is_upload_start)

    def injected(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    # -- decisions --------------------------------------------------------------------------------

    def _decide(self, request: Request) -> object:
        now = time.monotonic()
        with self._lock:
            if self._started is None:
                self._started = now  # the fault window opens with the first request
        decision = self.rule(request) if self.rule else None
        if decision is None or (isinstance(decision, tuple) and decision[0] == "delay"):
            return decision
        kind = str(decision)
        with self._lock:
            too_late = self.fault_window_s is not None and now - self._started > self.fault_window_s
            total = sum(self.faults.values())
            over = self.max_faults is not None and total >= self.max_faults
            capped = kind in self.caps and self.faults[kind] >= self.caps[kind]
            if too_late or over or capped:
                return None
            self.faults[kind] += 1
        return kind

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges[exchange.seq] = exchange

    # -- plumbing ---------------------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        buf = b""
        try:
            while not self._stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    if len(buf) > _MAX_HEAD_BYTES:
                        return
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                parts = urlsplit(target)
                request = Request(method, unquote(parts.path), parts.query, length)
                with self._lock:
                    self.requests.append(request)
                    pending = Exchange(
                        seq=len(self.exchanges),
                        at=time.monotonic(),
                        method=method,
                        path=request.path,
                        query=parts.query,
                        body_bytes=length,
                        fault=None,
                        forwarded=False,
                        status=None,
                    )
                    self.exchanges.append(pending)
                decision = self._decide(request)
                fault = decision if isinstance(decision, str) else None
                pending = replace(pending, fault=fault)
                self._record(pending)
                if isinstance(decision, tuple) and decision[0] == "delay":
                    self._stopped.wait(float(decision[1]))
                if fault == "reset":
                    _reset(client)
                    return
                body, buf = self._read_body(client, buf, length, headers)
                if len(body) < length:
                    return
                if fault == "reset_after_body":
                    _reset(client)
                    return
                if fault in ANSWER_FAULTS:
                    client.sendall(_error_response(*ANSWER_FAULTS[fault]))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(
                        (self.target_host, self.target_port), timeout=60
                    )
                # Expect is never signed (botocore leaves it out of SigV4); the proxy has already
                # answered 100 Continue itself, so the server must not send a second one.
                upstream.sendall(_without_expect(lines) + body)
                pending = replace(pending, forwarded=True)
                self._record(pending)
                status, response, keep_alive = _read_response(upstream, method)
                self._record(replace(pending, forwarded=True, status=status))
                if fault == "reset_after_forward":
                    _reset(client)
                    return
                if fault == "truncate":
                    client.sendall(response[: max(1, len(response) // 2)])
                    return
                if fault == "stall":
                    self._stopped.wait(self.stall_s)
                    return
                client.sendall(response)
                if not keep_alive:
                    return
        except (OSError, ValueError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _error_response(status: int, reason: str, code: str) -> bytes:
    xml = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>injected by the chaos proxy</Message></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(xml)}\r\n\r\n"
    ).encode() + xml


def _without_expect(lines: list[str]) -> bytes:
    kept = [line for line in lines if not line.lower().startswith("expect:")]
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")


def _read_response(sock: socket.socket, method: str) -> tuple[int, bytes, bool]:
    """Read one whole HTTP/1.1 response: (status, raw bytes, keep-alive)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("upstream closed before a full response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    raw = head + b"\r\n\r\n"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, raw, keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        reader = _Reader(sock, rest)
        while True:
            size_line = reader.line()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while reader.line():  # trailers, up to the empty line
                    pass
                break
            reader.exact(size + 2)
        return status, raw + reader.consumed, keep_alive
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = rest
        while len(body) < length:
            chunk = sock.recv(min(1 << 20, length - len(body)))
            if not chunk:
                raise ConnectionError("upstream closed inside the body")
            body += chunk
        return status, raw + body, keep_alive
    body = rest
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return status, raw + body, False
        body += chunk


def seeded_faults(
    rate: float,
    kinds: Iterable[str] = ALL_FAULTS,
    *,
    seed: int,
    methods: Iterable[str] | None = None,
) -> Callable[[Request], object]:
    """A rule failing ``rate`` of requests with a kind drawn from ``kinds``, reproducibly.

    Each decision is drawn from a generator seeded by (seed, method, key, query, how many times
    this exact request was seen), so the same migration meets the same faults however its
    threads interleave.
    """
    kinds = tuple(kinds)
    wanted = None if methods is None else frozenset(methods)
    seen: Counter[tuple[str, str, str]] = Counter()
    lock = threading.Lock()

    def rule(request: Request) -> object:
        if wanted is not None and request.method not in wanted:
            return None
        identity = (request.method, request.key, request.query)
        with lock:
            seen[identity] += 1
            nth = seen[identity]
        rng = random.Random(f"{seed}|{request.method}|{request.key}|{request.query}|{nth}")
        if rng.random() >= rate:
            return None
        return rng.choice(kinds)

    return rule


def always(kind: str, *, methods: Iterable[str] | None = None) -> Callable[[Request], object]:
    """A rule failing every request (of ``methods``) with ``kind``."""
    wanted = None if methods is None else frozenset(methods)
    return lambda request: kind if wanted is None or request.method in wanted else None


class _Reader:
    """Reads lines and exact byte counts from a socket, keeping every byte it consumed."""

    def __init__(self, sock: socket.socket, initial: bytes) -> None:
        self.sock = sock
        self.buf = initial
        self.consumed = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("upstream closed inside a chunked body")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        self.consumed += line + b"\r\n"
        return line

    def exact(self, count: int) -> bytes:
        while len(self.buf) < count:
            self._fill()
        data, self.buf = self.buf[:count], self.buf[count:]
        self.consumed += data
        return data
