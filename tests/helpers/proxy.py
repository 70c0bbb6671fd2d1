"""A loopback HTTP/1.1 proxy between the client and the S3 server: counts and injects faults.

Test helper, not part of the package. It reads each request's header block and body (by
Content-Length), records it, and either forwards it to the real server or answers itself (503,
SlowDown, a reset). Responses are pumped back unchanged. botocore never pipelines, so a request
answered by the proxy never interleaves with a server response on the same connection.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded path, e.g. /bucket/key
    query: str
    body_bytes: int
    headers: dict[str, str] = field(default_factory=dict, compare=False)  # names lower-cased

    @property
    def key(self) -> str:
        """The object key of a path-style request (`/bucket/key`)."""
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else ""


# A rule sees a request and says what to do: None (forward), "reset", "503", "slowdown",
# ("delay", seconds), or ("respond", status, headers): answered here with an empty body, the
# way no real server would (a header given as None is left out: {"Date": None} sends none).
Rule = Callable[[Request], object]


class Flaky:
    """A rule failing about ``rate`` of the requests of ``methods`` with a kind from ``kinds``.

    Reproducible: each decision is drawn from (seed, method, key, query, how many times this
    exact request was seen), whatever the threads' order. A request is failed at most ``most``
    times, so a client trying ``most + 1`` times always gets through. The first request of
    each (method, key) in ``first`` fails whatever the draw ('' is the bucket: its HEAD, LIST).
    ``faulted`` counts the requests the proxy answered itself, per (method, key): those never
    reached the server.
    """

    def __init__(
        self,
        rate: float,
        *,
        seed: int,
        methods: tuple[str, ...] = ("HEAD", "GET", "DELETE"),
        kinds: tuple[str, ...] = ("503", "slowdown", "reset"),
        most: int = 2,
        first: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.rate, self.seed, self.methods, self.kinds, self.most = rate, seed, methods, kinds, most
        self.first = frozenset(first)
        self.faulted: Counter[tuple[str, str]] = Counter()
        self._seen: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> object:
        if request.method not in self.methods:
            return None
        identity = (request.method, request.key, request.query)
        with self._lock:
            self._seen[identity] += 1
            nth = self._seen[identity]
        rng = random.Random(f"{self.seed}|{'|'.join(identity)}|{nth}")
        forced = nth == 1 and (request.method, request.key) in self.first
        if not forced and (nth > self.most or rng.random() >= self.rate):
            return None
        with self._lock:
            self.faulted[(request.method, request.key)] += 1
        return rng.choice(self.kinds)

    def reached(self, proxy: FaultProxy, method: str) -> Counter[str]:
        """Requests of ``method`` per key that the server received (sent minus faulted)."""
        sent = proxy.count(method)
        return Counter({k: n - self.faulted[(method, k)] for k, n in sent.items()})


@dataclass
class FaultProxy:
    target_host: str
    target_port: int
    rule: Rule | None = None
    seed: int = 0
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, *, with_query: str | None = None) -> Counter[str]:
        """Requests per key for one method (optionally only those whose query has a marker)."""
        with self._lock:
            return Counter(
                r.key
                for r in self.requests
                if r.method == method and (with_query is None or with_query in r.query)
            )

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.target_host, self.target_port), timeout=30)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        buf = b""
        try:
            while not self._stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                parts = urlsplit(target)
                request = Request(method, unquote(parts.path), parts.query, length, headers)
                with self._lock:
                    self.requests.append(request)
                decision = self.rule(request) if self.rule else None
                if isinstance(decision, tuple) and decision[0] == "delay":
                    time.sleep(float(decision[1]))
                    decision = None
                if isinstance(decision, tuple) and decision[0] == "respond":
                    _body, buf = self._read_body(client, buf, length, headers)
                    status, extra = decision[1], decision[2]
                    out = {"Content-Length": "0", "Date": formatdate(usegmt=True), **extra}
                    block = "".join(f"{k}: {v}\r\n" for k, v in out.items() if v is not None)
                    client.sendall(f"HTTP/1.1 {status} Forged\r\n{block}\r\n".encode("latin-1"))
                    continue
                if decision == "reset":
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    return
                if decision in ("503", "slowdown"):
                    _body, buf = self._read_body(client, buf, length, headers)
                    code = "SlowDown" if decision == "slowdown" else "ServiceUnavailable"
                    xml = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected by test proxy</Message></Error>"
                    ).encode()
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                        + f"Content-Length: {len(xml)}\r\n\r\n".encode()
                        + xml
                    )
                    continue
                upstream.sendall(head + b"\r\n\r\n")
                remaining = length
                if buf:
                    take = buf[:remaining]
                    upstream.sendall(take)
                    buf = buf[len(take) :]
                    remaining -= len(take)
                while remaining > 0:
                    chunk = client.recv(min(65536, remaining))
                    if not chunk:
                        return
                    upstream.sendall(chunk)
                    remaining -= len(chunk)
        except (OSError, ValueError):
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    @staticmethod
    def _read_body(
        client: socket.socket, buf: bytes, length: int, headers: dict[str, str]
    ) -> tuple[bytes, bytes]:
        if headers.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = buf[:length]
        buf = buf[length:]
        while len(body) < length:
            chunk = client.recv(min(65536, length - len(body)))
            if not chunk:
                break
            body += chunk
        return body, buf

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
