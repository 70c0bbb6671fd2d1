"""The ``MediaSource`` interface: where a file's bytes are read, chosen once from the settings.

Must never write a file, touch the database or decide what to upload: a source stats, hashes and
reads one named file, and hands the bytes it read to an ``Uploader`` its caller supplies.
``open_media_source(settings)`` is the resolver (as s3transfer's ``upload.py`` picks an input
manager once): ``disk`` (``DiskSource`` over ``media/disk.py``, under MEDIA_ROOT) or ``http``
(``HttpSource`` over ``media/http.py``, GET from MEDIA_URL), both in ``media/sources.py``.
Nothing else branches on ``settings.source``.

    MediaSource
    ├── DiskSource   media_root: resolve under MEDIA_ROOT, fstat what was read, list the folder
    └── HttpSource   media_url: HEAD/GET with the auth header, Content-Length held to the ledger
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, ClassVar, Protocol

from r2migrate.errors import SourceError, ToolkitError

if TYPE_CHECKING:
    from r2migrate.settings.model import Settings

__all__ = [
    "FileStat",
    "Located",
    "MediaSource",
    "Sent",
    "SourceChanged",
    "Uploader",
    "media_setting",
    "open_media_source",
]


class SourceChanged(Exception):
    """The file changed between the stat before reading and the stat after (retryable)."""


class FileStat(Protocol):
    """What a source says about one file: its size and, when known, its mtime."""

    @property
    def size_bytes(self) -> int: ...

    @property
    def mtime_ns(self) -> int | None: ...


class Uploader(Protocol):
    """Where a source hands the bytes of one file (the transfer stage's bucket and fastput)."""

    def put_bytes(self, data: bytes, sha256_hex: str) -> str:
        """One create-only PUT of a whole small file; returns the ETag."""
        ...

    def put_file(
        self, fh: BinaryIO, *, size_bytes: int, mtime_ns: int, part_size_bytes: int
    ) -> tuple[str, str]:
        """Multipart from a real, seekable file that is hashed in the same pass: (SHA-256, ETag)."""
        ...

    def put_stream(
        self, body: IO[bytes], *, size_bytes: int, part_size_bytes: int, sha256_hex: str
    ) -> str:
        """Multipart from a forward-only stream whose SHA-256 is already known; returns the ETag."""
        ...


@dataclass(frozen=True)
class Located:
    """Where a row's name leads on the source: the name the file has there (None when there is
    none, or the source has no names of its own), the problems met on the way, its stat."""

    name: str | None
    problems: tuple[str, ...]
    stat: FileStat | None


@dataclass(frozen=True)
class Sent:
    """What one upload sent: the SHA-256 and count of the bytes read, the object's ETag."""

    sha256_hex: str
    etag: str
    part_size_bytes: int | None  # None: a single PUT
    size_bytes: int
    mtime_ns: int | None


class MediaSource(abc.ABC):
    """Reads media files by their Django name; thread-safe; ``close()`` when done (or ``with``).

    Every read refuses an unsafe name (``UnsafePath``) before the disk or the server is asked;
    a file that is not there is ``SourceError(MISSING)``.
    """

    kind: ClassVar[str]  # "disk" or "http", as settings.source and the ledger spell it
    setting: ClassVar[str]  # the setting that says where: "media_root" or "media_url"
    lists_files: ClassVar[bool]  # can walk every file (orphans, Unicode spellings)
    concurrent_stats: ClassVar[bool]  # a stat waits on the network: worth threads

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> MediaSource:
        """The source as the settings describe it (opens no connection yet)."""

    def require_configured(self) -> None:  # noqa: B027 (a source with nothing to require)
        """Raise ``ConfigError`` when the setting that says where the files are is missing."""

    def check(self) -> None:  # noqa: B027 (a source with nothing to check)
        """Raise ``ConfigError`` (exit 2) when the source cannot serve at all (before any file)."""

    @abc.abstractmethod
    def stat(self, name: str | None) -> FileStat:
        """Size and mtime of one file, proven readable."""

    @abc.abstractmethod
    def sha256(self, name: str | None) -> tuple[str, int]:
        """(hex SHA-256, bytes read) of one file; memory stays at one chunk."""

    @abc.abstractmethod
    def send(
        self,
        name: str,
        *,
        size_bytes: int,
        mtime_ns: int | None,
        part_size_bytes: int | None,
        to: Uploader,
    ) -> Sent:
        """Read one file and hand its bytes to ``to``: whole (``part_size_bytes`` None) or in
        parts. Sends nothing (``SourceError``, ``SOURCE_CHANGED`` or ``SIZE_MISMATCH``) when
        the file is not the ``size_bytes``/``mtime_ns`` the inventory measured; raises
        ``SourceChanged`` when it changed while it was read."""

    @abc.abstractmethod
    def locate(self, name: str, *, refused: Collection[str] = ()) -> Located:
        """The file a row's ``name`` stands for, as inventory records it. ``refused`` are the
        problems the name's text already has; a source may then not ask at all. Raises only
        what stops the whole inventory (``SourceRefused``)."""

    @abc.abstractmethod
    def same_content(self, names: list[str]) -> bool:
        """True when every name is a readable file and all hold the same bytes (False when the
        source cannot tell without fetching them)."""

    @abc.abstractmethod
    def iter_files(
        self, *, on_error: Callable[[str, SourceError], None] | None = None
    ) -> Iterator[str]:
        """Every file the source holds, by Django name, in byte order (nothing when it cannot
        list itself); a folder that cannot be listed goes to ``on_error``."""

    def about_the_source(self, exc: SourceError) -> ToolkitError | None:
        """The error to raise for the whole run when ``exc`` says nothing about the one file
        (a media server refusing or failing), else None: the file alone has a problem."""
        return None

    def close(self) -> None:  # noqa: B027 (a source that holds nothing)
        """Release what the source holds (connections); reads after it fail."""

    def __enter__(self) -> MediaSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def media_setting(settings: Settings) -> str:
    """The setting that says where the configured source reads: ``media_root`` or ``media_url``."""
    return _source_class(settings).setting


def open_media_source(settings: Settings) -> MediaSource:
    """The source ``settings.source`` names, built from the settings."""
    return _source_class(settings).from_settings(settings)


def _source_class(settings: Settings) -> type[MediaSource]:
    """The one place that picks an implementation."""
    # Imported here: the implementations import this module for the interface.
    from r2migrate.media.sources import DiskSource, HttpSource

    return HttpSource if settings.source == "http" else DiskSource
