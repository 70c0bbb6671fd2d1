"""Multipart pieces that need no client: part sizes, a part as a window of the source file, and
the source-side failures a part can meet.

Must never send a request or open a file by name: it reads only the stream it is handed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from r2migrate.errors import DigestMismatch, SourceMoved, SourceShort, SourceUnreadable

__all__ = [
    "MAX_PARTS",
    "MIN_PART_BYTES",
    "FileRegion",
    "PartSender",
    "SourceMoved",
    "SourceShort",
    "SourceUnreadable",
    "part_size_for",
    "sha256_b64",
]

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
_HASH_BLOCK_BYTES = 1 << 20  # one reusable read buffer per multipart upload


def sha256_b64(hex_digest: str) -> str:
    """The ChecksumSHA256 header value: base64 of the raw digest."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


@dataclass(frozen=True)
class FileRegion:
    """``size`` bytes of the open file ``fd`` from ``offset``: a part sent without copying it."""

    fd: int
    offset: int
    size: int


# Sends one part of a multipart upload and returns its ETag: (key, upload id, part number, the
# bytes, their SHA-256 in base64). fastput.FastPut.upload_part is one; raises BucketError.
PartSender = Callable[[str, str, int, FileRegion, str], str]


def part_size_for(size_bytes: int, chunk_bytes: int) -> int:
    """Equal parts of at least `chunk_bytes`, grown until the file fits in 10,000 parts."""
    part = max(chunk_bytes, MIN_PART_BYTES)
    while size_bytes > part * MAX_PARTS:
        part *= 2
    return part


class _PartWindow:
    """Bytes ``[offset, offset + size)`` of a seekable stream, as a file botocore can stream.

    botocore takes the length from ``len()``, rewinds with ``seek``/``tell`` and reads in
    blocks; every read seeks the underlying stream first, so nothing else need keep its place.
    """

    def __init__(
        self, stream: IO[bytes], offset: int, size: int, lock: threading.Lock | None = None
    ) -> None:
        self._stream = stream
        self.offset = offset
        self._size = max(0, size)
        self._pos = 0
        # Windows of one stream sent in parallel share this lock: a seek and its read are one step.
        self._lock = lock or threading.Lock()
        self.shrank = False  # the stream ended early while botocore read it

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = min(max(0, base + pos), self._size)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = self._size - self._pos
        count = left if size is None or size < 0 else min(size, left)
        if count <= 0:
            return b""
        with self._lock:
            self._stream.seek(self.offset + self._pos)
            data = self._stream.read(count)
        if len(data) < count:
            # Shrunk since it was hashed: end the request now rather than leave the server
            # waiting for the promised Content-Length until the read timeout.
            self.shrank = True
            raise OSError(f"the source ended {count - len(data)} bytes early")
        self._pos += len(data)
        return data

    def region(self) -> FileRegion:
        """The window as a region of the stream's file (the stream must be a real file)."""
        return FileRegion(self._stream.fileno(), self.offset, self._size)

    def still_hashes_to(self, digest_b64: str) -> bool:
        """Read the window again: does it still have the SHA-256 it had when it was hashed?"""
        again = hashlib.sha256()
        got = self.hash(bytearray(_HASH_BLOCK_BYTES), again)
        return got == self._size and base64.b64encode(again.digest()).decode() == digest_b64

    def hash(self, scratch: bytearray, *digests: Any) -> int:
        """Feed the window to ``digests`` through ``scratch``; the bytes found (short at EOF)."""
        readinto = getattr(self._stream, "readinto", None)
        done = 0
        with memoryview(scratch) as view:
            while done < self._size:
                want = min(len(view), self._size - done)
                with self._lock:
                    self._stream.seek(self.offset + done)
                    if readinto is not None:
                        count = int(readinto(view[:want]) or 0)
                        chunk: Any = view[:count]
                    else:  # a stream without readinto: one copy per read
                        chunk = self._stream.read(want)
                        count = len(chunk)
                if not count:
                    break
                for digest in digests:
                    digest.update(chunk)
                done += count
        return done


def _is_regular_file(stream: IO[bytes]) -> bool:
    """True for a stream on a regular file, which parts may read at any offset in parallel."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def _source_changed(key: str, read_bytes: int, size_bytes: int) -> DigestMismatch:
    return DigestMismatch(
        f"{key}: the file changed while it was uploaded "
        f"({read_bytes} bytes read, {size_bytes} expected)",
        code="SourceChanged",
    )


def _check_unchanged(
    key: str, fd: int, size_bytes: int, mtime_ns: int, *, started: bool = False
) -> None:
    """Raise when the file's size or mtime moved: ``SourceMoved`` (retryable, code
    ``source_changed`` as transfer gives a small file) while nothing is sent yet, else
    ``DigestMismatch`` ``SourceChanged`` (the upload is aborted, the file is failed)."""
    now = os.fstat(fd)
    if now.st_size == size_bytes and now.st_mtime_ns == mtime_ns:
        return
    message = (
        f"{key}: the file changed while it was uploaded (size {now.st_size:,} bytes, "
        f"was {size_bytes:,}; modified at {now.st_mtime_ns} ns, was {mtime_ns})"
    )
    if started:
        raise DigestMismatch(message, code="SourceChanged")
    raise SourceMoved(message, code="source_changed")
