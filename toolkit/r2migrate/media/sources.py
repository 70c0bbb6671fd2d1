"""The two ``MediaSource`` implementations: ``DiskSource`` (MEDIA_ROOT) and ``HttpSource``
(MEDIA_URL), each a thin layer over ``disk.py`` or ``http.py`` that holds the upload proof.

Must never write a file, touch the database or talk to the bucket itself: bytes go to the
``Uploader`` the caller hands in. Built by ``base.open_media_source(settings)``, never chosen by
the stages.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from r2migrate.errors import (
    ConfigError,
    Problem,
    SourceError,
    SourceRefused,
    SourceUnavailable,
    ToolkitError,
)
from r2migrate.media import disk
from r2migrate.media.base import FileStat, Located, MediaSource, Sent, SourceChanged, Uploader
from r2migrate.media.http import MediaServer, SeekWindow

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = ["DiskSource", "HttpSource"]

# A name refused for its text alone is never sent to the media server.
_NAME_REFUSALS = frozenset(
    {Problem.TRAVERSAL.value, Problem.ABSOLUTE_PATH.value, Problem.KEY_INVALID.value}
)


class DiskSource(MediaSource):
    """Files under MEDIA_ROOT, every read through ``disk``'s safe resolution; a file is proven
    unchanged by the stat of the very descriptor that was read."""

    kind = "disk"
    setting = "media_root"
    lists_files = True
    concurrent_stats = False

    def __init__(self, media_root: Path | None) -> None:
        self.media_root = media_root
        self._root = Path(media_root) if media_root is not None else Path()

    @classmethod
    def from_settings(cls, settings: Settings) -> DiskSource:
        return cls(settings.media_root)

    def require_configured(self) -> None:
        if self.media_root is None:
            raise ConfigError(
                "media_root is not set.", hint="Set media_root (Django's MEDIA_ROOT)."
            )

    def check(self) -> None:
        disk.check_media_root(self.media_root)

    def stat(self, name: str | None) -> FileStat:
        return disk.stat_media_file(self._root, name)

    def sha256(self, name: str | None) -> tuple[str, int]:
        return disk.sha256_file(self._root, name)

    def locate(self, name: str, *, refused: Collection[str] = ()) -> Located:
        """The file Django serves for ``name`` today, or its one Unicode-equivalent spelling."""
        try:
            found_name = disk.media_name(name)
        except SourceError as exc:
            return Located(None, (exc.problem.value,), None)
        try:
            return Located(found_name, (), disk.stat_media_file(self._root, found_name))
        except SourceError as exc:
            if exc.problem is not Problem.MISSING or found_name.endswith("/"):
                return Located(found_name, (exc.problem.value,), None)
        # django-storages will ask for the row's exact spelling; the bytes may sit under another.
        others = [c for c in disk.unicode_spellings(self._root, found_name) if c != found_name]
        if len(others) > 1:
            return Located(None, (Problem.UNICODE_AMBIGUOUS.value,), None)
        if not others:
            return Located(found_name, (Problem.MISSING.value,), None)
        try:
            found = disk.stat_media_file(self._root, others[0])
        except SourceError as exc:
            return Located(others[0], (Problem.UNICODE_SPELLING.value, exc.problem.value), None)
        return Located(others[0], (Problem.UNICODE_SPELLING.value,), found)

    def same_content(self, names: list[str]) -> bool:
        digests: set[str] = set()
        for name in names:
            found = self.locate(name)
            if found.name is None or any(Problem(p).blocking for p in found.problems):
                return False
            try:
                digests.add(self.sha256(found.name)[0])
            except SourceError:
                return False
        return len(digests) == 1

    def iter_files(
        self, *, on_error: Callable[[str, SourceError], None] | None = None
    ) -> Iterator[str]:
        return disk.iter_media_files(self._root, on_error=on_error)

    def send(
        self,
        name: str,
        *,
        size_bytes: int,
        mtime_ns: int | None,
        part_size_bytes: int | None,
        to: Uploader,
    ) -> Sent:
        # One safe path resolution per file; the checks after the read use the descriptor
        # (fstat), which is what was read, so a rename or swap afterwards cannot fool them.
        fh, before = disk.open_media_file_with_stat(self._root, name)
        with fh:
            _check_against_ledger(name, before, size_bytes, mtime_ns)
            if part_size_bytes is None:
                data = fh.read()
                after = os.fstat(fh.fileno())
                if (
                    after.st_size != before.size_bytes
                    or after.st_mtime_ns != before.mtime_ns
                    or len(data) != before.size_bytes
                ):
                    raise SourceChanged(f"{name} changed while it was read")
                sha = hashlib.sha256(data).hexdigest()
                etag = to.put_bytes(data, sha)
                return Sent(sha, etag, None, len(data), before.mtime_ns)
            # Large: one pass hashes the parts and the whole file, then the parts go from the
            # file at their offsets (fastput: sendfile), each checked by the server.
            sha, etag = to.put_file(
                fh,
                size_bytes=before.size_bytes,
                mtime_ns=before.mtime_ns,
                part_size_bytes=part_size_bytes,
            )
            return Sent(sha, etag, part_size_bytes, before.size_bytes, before.mtime_ns)


def _check_against_ledger(
    name: str, found: disk.SourceStat, size_bytes: int, mtime_ns: int | None
) -> None:
    """Send only the file inventory measured: another size (or mtime, where recorded) is a
    ``source_changed`` failure, never an upload of other bytes under the planned key."""
    if found.size_bytes == size_bytes and mtime_ns in (None, found.mtime_ns):
        return
    now = f"{found.size_bytes} bytes, mtime_ns {found.mtime_ns}"
    raise SourceError(
        f"{name} is now {now}; inventory measured {size_bytes} bytes, "
        f"mtime_ns {mtime_ns}. Nothing was sent.",
        problem=Problem.SOURCE_CHANGED,
        hint="Take the inventory and plan again for the changed file.",
    )


class HttpSource(MediaSource):
    """Files GET from the application's MEDIA_URL (``http.MediaServer``); the proof is the
    SHA-256 of the bytes received, their count held to Content-Length and to the ledger."""

    kind = "http"
    setting = "media_url"
    lists_files = False
    concurrent_stats = True

    def __init__(self, server: MediaServer) -> None:
        self.server = server

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSource:
        return cls(MediaServer.from_settings(settings))

    @property
    def media_url(self) -> str:
        return self.server.media_url

    def stat(self, name: str | None) -> FileStat:
        return self.server.stat(name)

    def sha256(self, name: str | None) -> tuple[str, int]:
        return self.server.sha256(name)

    def locate(self, name: str, *, refused: Collection[str] = ()) -> Located:
        """The size and mtime the server gives ``name``; a name whose text is already refused
        is never sent. 401/403 (``SourceRefused``) stops the inventory: it is the set-up."""
        if _NAME_REFUSALS.intersection(refused):
            return Located(None, (), None)
        try:
            found = self.stat(name)
        except SourceRefused:
            raise
        except SourceError as exc:
            return Located(None, (exc.problem.value,), None)
        return Located(None, (), found)

    def same_content(self, names: list[str]) -> bool:
        return False  # no bytes to compare without fetching them: every NFC-equal pair is refused

    def iter_files(
        self, *, on_error: Callable[[str, SourceError], None] | None = None
    ) -> Iterator[str]:
        return iter(())  # a web server does not list its folder: no orphans over HTTP

    def about_the_source(self, exc: SourceError) -> ToolkitError | None:
        # Over HTTP only a 404 says something about the file: 401/403 is about the credentials
        # (wrong for every file), any other refusal about the server.
        if exc.problem is Problem.MISSING:
            return None
        if isinstance(exc, SourceRefused):
            return exc
        return SourceUnavailable(exc.message, hint=exc.hint)

    def close(self) -> None:
        self.server.close()

    def send(
        self,
        name: str,
        *,
        size_bytes: int,
        mtime_ns: int | None,
        part_size_bytes: int | None,
        to: Uploader,
    ) -> Sent:
        # A body shorter than its Content-Length raises SourceUnavailable (retried); a size
        # other than the ledger's is a SIZE_MISMATCH failure and nothing is sent.
        expected = size_bytes
        with self.server.open(name) as body:
            _check_remote_size(name, expected, body.content_length, "its Content-Length")
            mtime = body.mtime_ns if body.mtime_ns is not None else mtime_ns
            if part_size_bytes is None:
                data = body.read(expected + 1)  # one byte more than expected shows a longer body
                _check_remote_size(name, expected, len(data), "the body received")
                sha = hashlib.sha256(data).hexdigest()
                etag = to.put_bytes(data, sha)
                return Sent(sha, etag, None, len(data), mtime)
            # Large: the digest travels in the metadata sent before the parts, so it needs a
            # first pass; the body is not kept, so the parts come from a second GET, which
            # the multipart upload re-hashes and aborts on if the two differ. That GET is held
            # one part at a time (SeekWindow): the multipart path reads each part twice.
            digest = hashlib.sha256()
            while chunk := body.read(1 << 20):
                digest.update(chunk)
            _check_remote_size(name, expected, body.bytes_read, "the body received")
        sha = digest.hexdigest()
        with self.server.open(name) as again:
            _check_remote_size(name, expected, again.content_length, "its Content-Length")
            etag = to.put_stream(
                cast("IO[bytes]", SeekWindow(again, part_size_bytes)),  # forward seeks only
                size_bytes=expected,
                part_size_bytes=part_size_bytes,
                sha256_hex=sha,
            )
        return Sent(sha, etag, part_size_bytes, expected, mtime)


def _check_remote_size(name: str, expected: int, size: int | None, what: str) -> None:
    """``size`` (None: not told) must be the size inventory recorded for the file."""
    if size is not None and size != expected:
        raise SourceError(
            f"{name!r}: {what} is {size} bytes, the inventory recorded "
            f"{expected}; nothing was uploaded",
            problem=Problem.SIZE_MISMATCH,
            hint="If the file changed on purpose, take a new inventory and plan.",
        )
