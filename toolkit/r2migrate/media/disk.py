"""The read-only disk side: resolve a Django name under MEDIA_ROOT, stat, open, hash, walk.

Must never write, rename, chmod or delete anything on disk, and never touch the database or bucket.

Every read goes through one path (``_open_checked``): the name is checked as text, resolved one
component at a time (each symlink met must stay inside ``realpath(MEDIA_ROOT)``, the result
strictly below it); then the resolved path, which holds no symlink, is walked
again one component at a time from the real root with ``O_NOFOLLOW`` and ``dir_fd``, so a directory
swapped for a symlink after resolution is refused instead of followed. The final component is
``lstat``-ed before it is opened (a fifo or device node is never opened at all) and the opened
descriptor must be the same inode, which closes the window for a last-moment swap.

On Linux the common case (no symlink anywhere in the name) takes a shortcut with the same
guarantees: ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` lets the kernel resolve the
whole name beneath MEDIA_ROOT in one call, refusing every symlink; whatever it refuses, or any
platform without it, goes through the walk above, which has the last word and the precise errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from r2migrate.errors import ConfigError, Problem, SourceError, UnsafePath
from r2migrate.media.names import _HINT_NOT_REGULAR, _HINT_UNSAFE, check_name, media_name
from r2migrate.media.openat2 import PATH_FLAGS, RESOLVE_STRICT, openat2

__all__ = [
    "HashingReader",
    "SourceStat",
    "check_media_root",
    "files_identical_stat",
    "iter_media_files",
    "media_name",
    "open_media_file",
    "open_media_file_with_stat",
    "resolve_media_path",
    "sha256_file",
    "stat_media_file",
    "unicode_spellings",
]

# O_NONBLOCK: should a fifo be swapped in between the lstat and the open, the open still returns
# at once (and the inode check refuses it) instead of waiting forever for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_PATH needs only search (x) permission on a directory, as a plain path lookup does; O_RDONLY
# would also demand read permission and call a 0711 directory unreadable.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_HINT_MISSING = "Check media_root (MEDIA_ROOT) and the name stored in the row."
_HINT_UNREADABLE = "Run r2migrate as a user that can read MEDIA_ROOT, or fix the permissions."


@dataclass(frozen=True)
class SourceStat:
    """What the disk said about one source file, taken from the opened descriptor."""

    path: Path  # absolute, symlinks resolved, strictly inside realpath(MEDIA_ROOT)
    size_bytes: int
    mtime_ns: int
    inode: int
    device: int


def files_identical_stat(a: SourceStat, b: SourceStat) -> bool:
    """True when two stats describe the same, unchanged file (size, mtime, inode and device)."""
    return (a.size_bytes, a.mtime_ns, a.inode, a.device) == (
        b.size_bytes,
        b.mtime_ns,
        b.inode,
        b.device,
    )


def check_media_root(media_root: Path | None) -> Path:
    """``media_root`` when it is a directory this process can list; else a ConfigError (exit 2).

    Checked before a stage touches anything, so a missing mount fails the command, not every
    file in the ledger.
    """
    if media_root is None:
        raise ConfigError(
            "media_root is not set.",
            hint="Set media_root (Django's MEDIA_ROOT) in r2migrate.toml or R2MIGRATE_MEDIA_ROOT.",
        )
    if not media_root.is_dir() or not os.access(media_root, os.R_OK | os.X_OK):
        raise ConfigError(
            f"media_root {str(media_root)!r} is not a readable directory.",
            hint="Point media_root at Django's MEDIA_ROOT on this machine (is it mounted?).",
        )
    return media_root


def resolve_media_path(media_root: Path, name: str | None) -> Path:
    """Turn a Django file name (relative, '/'-separated, as stored) into a path under MEDIA_ROOT.

    Refuses (``UnsafePath``) empty names, absolute names, any '..' segment (split on '/' and on
    '\\', since django-storages turns a backslash into '/'), NUL bytes, names no file system can
    spell, symlink loops, names that resolve onto the root itself, and names with a symlink in
    any component whose target leaves ``realpath(media_root)``, even when a later component
    would lead back in. Symlinks that stay inside are resolved, so the result holds none. The
    file need not exist.
    """
    return Path(_resolve(_real_root(media_root), name))


def stat_media_file(media_root: Path, name: str | None) -> SourceStat:
    """Stat one source file after proving it can be opened for reading."""
    fd, found = _open_checked(media_root, name)
    os.close(fd)
    return found


def open_media_file(media_root: Path, name: str | None) -> BinaryIO:
    """Open one source file read-only and buffered; the caller closes it."""
    return open_media_file_with_stat(media_root, name)[0]


def open_media_file_with_stat(media_root: Path, name: str | None) -> tuple[BinaryIO, SourceStat]:
    """Open one source file read-only and return the stat of that very descriptor.

    Compare it with ``stat_media_file`` after the bytes are sent (``files_identical_stat``) to
    prove the file did not change during the upload.
    """
    fd, found = _open_checked(media_root, name)
    try:
        return os.fdopen(fd, "rb"), found
    except BaseException:
        os.close(fd)
        raise


def sha256_file(
    media_root: Path, name: str | None, *, chunk_bytes: int = 1 << 20
) -> tuple[str, int]:
    """Hash one source file in ``chunk_bytes`` pieces: (hex SHA-256, bytes read).

    Memory stays at one chunk whatever the file size.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    fd, found = _open_checked(media_root, name)
    digest = hashlib.sha256()
    total = 0
    # No bigger than the file: a default 1 MiB chunk per worker thread adds up for small files.
    buffer = memoryview(bytearray(max(1, min(chunk_bytes, found.size_bytes))))
    with os.fdopen(fd, "rb", buffering=0) as raw:
        while True:
            count = raw.readinto(buffer)
            if not count:
                break
            digest.update(buffer[:count])
            total += count
    return digest.hexdigest(), total


class HashingReader:
    """A read-only wrapper that hashes (SHA-256) and counts every byte read through it.

    Hand it to an uploader instead of the file: the digest then describes the bytes actually
    sent. It has no ``seek``, because a rewind would make the digest lie.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hexdigest()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        readinto: Callable[[memoryview], int | None] | None = getattr(self._raw, "readinto", None)
        if readinto is not None:
            count = readinto(view) or 0
        else:
            data = self._raw.read(len(view))
            count = len(data)
            view[:count] = data
        self.sha256.update(view[:count])
        self.bytes_read += count
        return count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_media_files(
    media_root: Path, *, on_error: Callable[[str, SourceError], None] | None = None
) -> Iterator[str]:
    """Yield every regular file under MEDIA_ROOT as a Django name, one at a time.

    Names use '/' and the on-disk spelling (``os.fsdecode``, never Unicode-normalised). They come
    sorted by their UTF-8 bytes, the order of PostgreSQL's ``COLLATE "C"``, so a merge with an
    ordered query finds orphans in bounded memory (only one directory listing is held per level).
    Directories that are symlinks are not followed. A symlink to a regular file inside the root
    is yielded under its own name; one leaving the root, dangling or naming a directory is
    skipped, as are fifos, sockets and devices. A directory that cannot be listed raises
    ``SourceError(UNREADABLE)``, or is reported to ``on_error(name, error)`` and skipped.
    """
    root = _real_root(media_root)
    if not os.path.isdir(root):
        raise SourceError(
            f"MEDIA_ROOT {root!r} is not a directory",
            problem=Problem.MISSING,
            hint=_HINT_MISSING,
        )
    # Depth-first with each listing sorted; a directory sorts as "name/", which makes the
    # depth-first order equal to the global byte order of the full names.
    stack: list[Iterator[tuple[str, bool]]] = []
    pending: Iterator[tuple[str, bool]] | None = _list_dir(root, "", on_error)
    while pending is not None or stack:
        if pending is not None:
            stack.append(pending)
            pending = None
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        relative, is_dir = entry
        if is_dir:
            pending = _list_dir(root, relative, on_error)
        else:
            yield relative


def _list_dir(
    root: str, relative: str, on_error: Callable[[str, SourceError], None] | None
) -> Iterator[tuple[str, bool]]:
    directory = os.path.join(root, relative) if relative else root
    entries: list[tuple[bytes, str, bool]] = []
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                name = f"{relative}/{entry.name}" if relative else entry.name
                kind = _entry_kind(root, name, entry)
                if kind is None:
                    continue
                is_dir = kind == "dir"
                key = os.fsencode(entry.name) + (b"/" if is_dir else b"")
                entries.append((key, name, is_dir))
    except FileNotFoundError:
        return iter(())  # removed while we walked: nothing left to report
    except OSError as exc:
        error = SourceError(
            f"cannot list {relative or '.'!r} under MEDIA_ROOT: {exc.strerror}",
            problem=Problem.UNREADABLE,
            hint=_HINT_UNREADABLE,
        )
        if on_error is None:
            raise error from exc
        on_error(relative, error)
        return iter(())
    entries.sort()
    return ((name, is_dir) for _, name, is_dir in entries)


def _entry_kind(root: str, name: str, entry: os.DirEntry[str]) -> str | None:
    try:
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
        if not entry.is_symlink():
            return None  # fifo, socket, device
        # A symlink is listed only when the front door (resolve) would let its name in.
        if stat.S_ISREG(os.stat(_resolve(root, name)).st_mode):
            return "file"
    except (OSError, UnsafePath):
        pass  # vanished, dangling, looping or leaving: not a file r2migrate would read
    return None


def unicode_spellings(media_root: Path, name: str, *, limit: int = 8) -> list[str]:
    """Names on disk that are Unicode-equivalent (NFC-equal) to ``name``, each component alike.

    For a row whose exact spelling is missing: a file saved on macOS (NFD) and a row in NFC, or
    the reverse. Lists one directory per component; at most ``limit`` names are returned. The
    caller still opens the chosen name through the usual checks.
    """
    root = _real_root(media_root)
    found = [""]
    for part in name.split("/"):
        target = unicodedata.normalize("NFC", part)
        following: list[str] = []
        for prefix in found:
            directory = os.path.join(root, prefix) if prefix else root
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            for entry in sorted(entries):
                if unicodedata.normalize("NFC", entry) == target:
                    following.append(f"{prefix}/{entry}" if prefix else entry)
        found = following[:limit]
        if not found:
            return []
    return found


def _resolve(root: str, name: str | None) -> str:
    """Resolve like ``realpath``, one component at a time, so that every symlink on the way
    (not only the final answer) must stay inside the root: a link out and back in is refused."""
    text = check_name(name)
    current = root
    walked = ""
    for part in text.split("/"):
        if part in ("", "."):
            continue
        walked = f"{walked}/{part}" if walked else part
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            candidate = os.path.realpath(candidate)
            if os.path.islink(candidate):  # realpath gives up on a loop and returns the link
                raise UnsafePath(
                    f"{text!r}: the symlinks at {walked!r} loop",
                    problem=Problem.SYMLINK_LOOP,
                    hint=_HINT_UNSAFE,
                )
            if candidate != root and not _strictly_inside(root, candidate):
                raise UnsafePath(
                    f"{text!r}: the symlink {walked!r} leads to {candidate!r}, "
                    f"outside MEDIA_ROOT {root!r}",
                    problem=Problem.SYMLINK_OUTSIDE,
                    hint=_HINT_UNSAFE,
                )
            if not os.path.lexists(candidate):
                raise UnsafePath(
                    f"{text!r}: the symlink {walked!r} leads to {candidate!r}, which is missing",
                    problem=Problem.DANGLING_SYMLINK,
                    hint="Fix or remove the symlink, or restore the file it points at.",
                )
        current = candidate
    if current == root:
        raise UnsafePath(
            f"{text!r} names MEDIA_ROOT itself, not a file under it",
            problem=Problem.NOT_REGULAR_FILE,
            hint=_HINT_NOT_REGULAR,
        )
    return current


def _real_root(media_root: Path) -> str:
    return os.path.realpath(os.fspath(media_root))


def _strictly_inside(root: str, path: str) -> bool:
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix) and len(path) > len(prefix)


def _open_checked(media_root: Path, name: str | None) -> tuple[int, SourceStat]:
    """Open a name read-only; return the descriptor (caller closes) and its stat."""
    fast = _open_fast(media_root, name)
    return fast if fast is not None else _open_walk(media_root, name)


def _open_walk(media_root: Path, name: str | None) -> tuple[int, SourceStat]:
    """The careful way: resolve component by component, then walk with O_NOFOLLOW."""
    # One realpath of the root for both steps: were MEDIA_ROOT a symlink retargeted in between,
    # two calls could disagree and the walk would start from another tree.
    root = _real_root(media_root)
    resolved = _resolve(root, name)
    if name is not None and name.endswith("/"):
        # POSIX would look through a trailing '/' only into a directory; django-storages keeps
        # the '/' in the key, so reading "a.txt" for "a.txt/" would upload under another name.
        raise SourceError(
            f"{name!r} ends in '/', so it names a directory",
            problem=Problem.NOT_REGULAR_FILE,
            hint=_HINT_NOT_REGULAR,
        )
    parts = resolved[len(root.rstrip(os.sep)) + 1 :].split(os.sep)
    try:
        dir_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise _error_for(exc, name, f"MEDIA_ROOT {root!r}") from exc
    try:
        for index, part in enumerate(parts[:-1]):
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _component_error(exc, name, part, dir_fd, parts[: index + 1]) from exc
            os.close(dir_fd)
            dir_fd = next_fd
        return _open_final(dir_fd, parts[-1], name, resolved)
    finally:
        os.close(dir_fd)


_root_cache: dict[str, tuple[int, int, str]] = {}  # MEDIA_ROOT as given -> (dev, ino, realpath)


def _open_fast(media_root: Path, name: str | None) -> tuple[int, SourceStat] | None:
    """The common case in a handful of syscalls: a name with no symlink on its way.

    The kernel resolves the whole name beneath MEDIA_ROOT in one call and refuses every symlink,
    so nothing can be swapped in between; an O_PATH descriptor is typed first, so a fifo or
    device is never opened, then reopened read-only through /proc (same inode, no new lookup).
    Any refusal or oddity returns None and the careful walk decides, with its precise errors.
    """
    text = check_name(name)
    if openat2 is None or text.endswith("/"):
        return None
    try:
        root_fd = os.open(media_root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        root_stat = os.fstat(root_fd)
        cached = _root_cache.get(os.fspath(media_root))
        if cached is None or cached[:2] != (root_stat.st_dev, root_stat.st_ino):
            # Fill the cache from the descriptor itself, never from a second lookup by name.
            real = os.readlink(f"/proc/self/fd/{root_fd}")
            cached = (root_stat.st_dev, root_stat.st_ino, real)
            _root_cache[os.fspath(media_root)] = cached
        path_fd = openat2(root_fd, os.fsencode(text), PATH_FLAGS, RESOLVE_STRICT)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    try:
        typed = os.fstat(path_fd)
        if not stat.S_ISREG(typed.st_mode):
            return None
        fd = os.open(f"/proc/self/fd/{path_fd}", _FILE_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return None
    finally:
        os.close(path_fd)
    try:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (typed.st_dev, typed.st_ino):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        os.close(fd)
        return None
    found = SourceStat(
        path=Path(cached[2], *parts),
        size_bytes=after.st_size,
        mtime_ns=after.st_mtime_ns,
        inode=after.st_ino,
        device=after.st_dev,
    )
    return fd, found


def _open_final(dir_fd: int, last: str, name: str | None, resolved: str) -> tuple[int, SourceStat]:
    try:
        before = os.stat(last, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise _error_for(exc, name, repr(resolved)) from exc
    if stat.S_ISLNK(before.st_mode):
        raise _swapped(name)
    if not stat.S_ISREG(before.st_mode):
        raise SourceError(
            f"{name!r} is a {_kind_of(before.st_mode)}, not a regular file",
            problem=Problem.NOT_REGULAR_FILE,
            hint=_HINT_NOT_REGULAR,
        )
    try:
        fd = os.open(last, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _swapped(name) from exc
        raise _error_for(exc, name, repr(resolved)) from exc
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise _swapped(name)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    found = SourceStat(
        path=Path(resolved),
        size_bytes=after.st_size,
        mtime_ns=after.st_mtime_ns,
        inode=after.st_ino,
        device=after.st_dev,
    )
    return fd, found


def _component_error(
    exc: OSError, name: str | None, part: str, dir_fd: int, walked: list[str]
) -> SourceError:
    # O_PATH|O_DIRECTORY|O_NOFOLLOW answers ENOTDIR for a symlink as for a plain file; only a
    # symlink means the tree changed after resolution (or loops), so ask which one it was.
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link or exc.errno == errno.ELOOP:
            return _swapped(name)
    return _error_for(exc, name, repr("/".join(walked)))


def _error_for(exc: OSError, name: str | None, where: str) -> SourceError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        problem, hint, what = Problem.UNREADABLE, _HINT_UNREADABLE, "permission denied"
    elif exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        problem, hint, what = Problem.MISSING, _HINT_MISSING, "no such file"
    elif exc.errno in (errno.ENXIO, errno.ENODEV):
        problem, hint, what = Problem.NOT_REGULAR_FILE, _HINT_NOT_REGULAR, "not a regular file"
    else:
        problem, hint, what = Problem.UNREADABLE, _HINT_UNREADABLE, exc.strerror or str(exc)
    return SourceError(f"{name!r}: {what} ({where})", problem=problem, hint=hint)


def _swapped(name: str | None) -> UnsafePath:
    return UnsafePath(
        f"{name!r}: a symlink appeared in the path while it was opened, or the symlinks loop",
        problem=Problem.UNSAFE_PATH,
        hint=_HINT_UNSAFE,
    )


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
