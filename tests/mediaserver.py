"""A real HTTP server on 127.0.0.1 serving a MEDIA_ROOT under ``/media/``, as a running app would.

Test helper, not part of the package. It is the standard library's ``SimpleHTTPRequestHandler``
(HTTP/1.1 keep-alive, Content-Length, Last-Modified, HEAD) with a few switches a test flips to
play a misbehaving application: a required header (401 without it), names answered 404 although
the file exists, names whose body stops halfway through its Content-Length, and no HEAD (405).
Every request is recorded (method, raw path, headers) so a test can prove what was, and was not,
asked for.
"""

from __future__ import annotations

import functools
import sys
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

PREFIX = "/media/"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # as sent: percent-encoded
    headers: dict[str, str]

    @property
    def name(self) -> str:
        """The Django name asked for: the decoded path below /media/."""
        return unquote(urlsplit(self.path).path)[len(PREFIX) :]


@dataclass
class Behaviour:
    required_header: tuple[str, str] | None = None  # (name, value): 401 without it
    missing: set[str] = field(default_factory=set)  # names answered 404 even if present
    short: set[str] = field(default_factory=set)  # names whose body stops halfway
    no_head: bool = False  # answer HEAD with 405, as some application servers do


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    seen: list[Seen]
    lock: threading.Lock

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that closes a body it does not want (a 404 page, a cut transfer) resets the
        # connection under the handler: expected here, so no traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test asserts on `seen`, not on stderr

    def translate_path(self, path: str) -> str:
        raw = urlsplit(path).path
        if not raw.startswith(PREFIX):
            return str(Path(self.directory) / ".no-such-entry")
        return super().translate_path("/" + raw[len(PREFIX) :])

    def _gate(self) -> bool:
        with self.server.lock:
            self.server.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
        rule = self.server.behaviour
        if rule.required_header is not None:
            name, value = rule.required_header
            if self.headers.get(name) != value:
                self.send_error(401, "Unauthorized")
                return False
        if unquote(urlsplit(self.path).path)[len(PREFIX) :] in rule.missing:
            self.send_error(404, "File not found")
            return False
        return True

    def do_HEAD(self) -> None:
        if not self._gate():
            return
        if self.server.behaviour.no_head:
            self.send_error(405, "Method Not Allowed")
            return
        super().do_HEAD()

    def do_GET(self) -> None:
        if not self._gate():
            return
        name = unquote(urlsplit(self.path).path)[len(PREFIX) :]
        if name in self.server.behaviour.short:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True  # then the socket closes: the body ends early
            return
        super().do_GET()


class MediaHTTPServer:
    """``with MediaHTTPServer(root) as server:`` serves ``root`` at ``server.url`` (…/media/)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.behaviour = Behaviour()
        self._server.seen = []
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}{PREFIX}"

    @property
    def behaviour(self) -> Behaviour:
        return self._server.behaviour

    @property
    def seen(self) -> list[Seen]:
        with self._server.lock:
            return list(self._server.seen)

    def __enter__(self) -> MediaHTTPServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
